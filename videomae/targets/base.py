"""One interface for reconstruction targets, and a registry so users add their own by name.

A target says what the decoder reconstructs for each token it predicts. It declares its width per
token (which sizes the decoder's prediction head) and computes, on the device and without reading
it back, the targets of the tokens at `ids` from the clip batch:

    @register_target("edges")
    class Edges(ReconstructionTarget):
        def width(self, enc):                  # enc: the student's EncoderConfig
            return enc.tubelet_size * enc.patch_size ** 2
        def __call__(self, video, enc, ids=None):
            # video (B, C, T, H, W) ImageNet-normalized float; ids (B, M) token indices, ascending,
            # or None for every token -> (B, M or N, width) float32, tokens in raster order (t, h, w)
            ...

`MODEL.TARGET edges` selects it once `IMPORTS` names the module registering it. A target that needs
settings reads them in `from_config(cfg)` (the default takes none). Targets supervise the tokens the
decoder predicts -- the masked ones, or under dual masking those the decoder keeps -- and the loss is
the mean squared error over them (`videomae/models/targets.py: masked_mse`).

A target is not an `nn.Module` attribute of the model: whatever it holds (a frozen teacher) stays
out of the optimizer, out of DeepSpeed and out of the checkpoints.
"""
from __future__ import annotations

import torch

TARGET_REGISTRY: dict[str, type["ReconstructionTarget"]] = {}

# MODEL.NORM_TARGET, kept for the configs that carry it: True = pixel, False = pixel_raw
NORM_TARGET_ALIAS = {True: "pixel", False: "pixel_raw"}


def register_target(name: str):
    def add(cls):
        if name in TARGET_REGISTRY and TARGET_REGISTRY[name] is not cls:
            raise ValueError(f"reconstruction target {name!r} is already registered")
        TARGET_REGISTRY[name] = cls
        cls.name = name
        return cls
    return add


def build_target(name: str, **kwargs) -> "ReconstructionTarget":
    if name not in TARGET_REGISTRY:
        raise ValueError(f"unknown reconstruction target {name!r}; registered: {sorted(TARGET_REGISTRY)}")
    return TARGET_REGISTRY[name](**kwargs)


def resolve_target_name(target: str, norm_target: bool) -> str:
    """MODEL.TARGET, with MODEL.NORM_TARGET as its alias. TARGET "" defers to NORM_TARGET (default
    True: `pixel`). NORM_TARGET False is an explicit choice (its default is True), so it must agree
    with a TARGET that is given."""
    alias = NORM_TARGET_ALIAS[bool(norm_target)]
    if not target:
        return alias
    if not norm_target and target != alias:
        raise ValueError(f"MODEL.TARGET = {target!r} disagrees with MODEL.NORM_TARGET = False (an alias of "
                         "MODEL.TARGET pixel_raw): drop MODEL.NORM_TARGET and keep MODEL.TARGET")
    return target


def target_from_config(cfg) -> "ReconstructionTarget":
    """The target the config selects, built with its settings."""
    name = resolve_target_name(cfg.MODEL.TARGET, cfg.MODEL.NORM_TARGET)
    if name not in TARGET_REGISTRY:
        raise ValueError(f"unknown reconstruction target {name!r}; registered: {sorted(TARGET_REGISTRY)}")
    return TARGET_REGISTRY[name].from_config(cfg)


class ReconstructionTarget:
    name = "base"
    # True when a token's values are its cube's pixels in (dt, dy, dx, c) order (a picture can be made
    # of them); pictures of other targets show the per-cube loss instead
    pixel_layout = False

    @classmethod
    def from_config(cls, cfg) -> "ReconstructionTarget":
        return cls()

    def width(self, enc) -> int:
        """Values per token (the decoder head's output width) for a student built as `enc`."""
        raise NotImplementedError

    def check(self, enc, grid) -> None:
        """Raise ValueError (one line) when this target cannot serve a student built as `enc` with
        token grid `grid`; called when the model is built."""

    def __call__(self, video: torch.Tensor, enc, ids: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def gather_tokens(tokens: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
    """(B, N, D) -> (B, M, D) at `ids` (B, M); all of them for None. An index gather: no host read."""
    if ids is None:
        return tokens
    return tokens.gather(1, ids[:, :, None].expand(-1, -1, tokens.shape[-1]))
