"""From a token mask to the index tensors the model gathers with.

A mask (B, N) bool, True = masked, becomes index tensors once per forward: a stable argsort puts
the visible tokens first and the masked ones after, each group in ascending token order (the
documented order of the encoder input and of the predictions). Everything after is a gather -- no
boolean indexing, no `nonzero`, no host read -- so the forward compiles as one graph. The one number
a gather's shape needs, how many tokens each row masks, comes from the strategy (`num_masked`),
not from reading the mask; left out, it is read from the mask (one device sync, fine outside a
compiled training step).
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class TokenSplit(NamedTuple):
    keep: torch.Tensor   # (B, N_vis) int64: tokens the encoder sees, ascending
    pred: torch.Tensor   # (B, M) int64: tokens the decoder predicts, ascending


def check_mask_layout(mask, batch_size: int, num_tokens: int, name: str = "mask") -> None:
    """dtype and shape: known without reading the device, so this costs nothing in a compiled
    forward. Equal counts per row are checked by `videomae.masking.validate_mask`."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        kind = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{name} must be a torch.bool tensor (True = masked), got {kind}; "
                         "a 0/1 integer mask would index tokens instead of selecting them")
    if mask.ndim != 2 or mask.shape[0] != batch_size or mask.shape[1] != num_tokens:
        raise ValueError(f"{name} must have shape (B, N) = ({batch_size}, {num_tokens}), "
                         f"got {tuple(mask.shape)}")


def masked_order(mask: torch.Tensor) -> torch.Tensor:
    """(B, N) token ids: unmasked ones ascending, then masked ones ascending."""
    return torch.argsort(mask.to(torch.uint8), dim=1, stable=True)


def count_masked(mask: torch.Tensor) -> int:
    """Masked tokens per row, read from the mask (a device sync; rows are assumed equal)."""
    return int(mask[0].sum()) if mask.shape[0] else 0


def split_tokens(mask: torch.Tensor, num_masked: int | None = None,
                 decoder_mask: torch.Tensor | None = None,
                 num_decoder_masked: int | None = None) -> TokenSplit:
    """Index tensors for one batch. The decoder predicts the masked tokens, or with `decoder_mask`
    (VideoMAE V2 dual masking, True = not reconstructed) the tokens it keeps."""
    N = mask.shape[1]
    num_masked = count_masked(mask) if num_masked is None else num_masked
    order = masked_order(mask)
    keep = order[:, :N - num_masked]
    if decoder_mask is None:
        return TokenSplit(keep, order[:, N - num_masked:])
    if num_decoder_masked is None:
        num_decoder_masked = count_masked(decoder_mask)
    return TokenSplit(keep, masked_order(decoder_mask)[:, :N - num_decoder_masked])
