"""The asymmetric masked autoencoder: the encoder sees only visible cubes, a light decoder
reconstructs the masked ones from mask tokens."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from .encoder import EncoderConfig, VideoEncoder
from .masks import TokenSplit, check_mask_layout, split_tokens
from .pos_embed import build_pos_embed, resize_pos_embed
from .targets import masked_mse
from .vit import Block, BlockStack, init_linear_and_norm


@dataclass
class PretrainConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder_embed_dim: int = 384
    decoder_depth: int = 4
    decoder_num_heads: int = 6
    decoder_mlp_ratio: float = 4.0
    norm_target: bool = True   # per-cube normalized pixels (official default); False: raw [0, 1]
                               # (the default target when none is given; see videomae/targets)


class PretrainOutput(NamedTuple):
    """A NamedTuple, not a dataclass: DeepSpeed ZeRO-3 hooks (and torch.compile) see inside tuples,
    so the backward pass re-gathers the parameters that produced these tensors."""
    loss: torch.Tensor          # scalar
    pred: torch.Tensor          # (B, M, target width; tubelet*p*p*C for pixels): decoded tokens, ascending
    target: torch.Tensor        # same shape, float32
    decoded: torch.Tensor       # (B, N) bool: which tokens `pred` covers


class MAEDecoder(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float, out_dim: int,
                 norm_eps: float = 1e-6, qkv_bias: bool = True, init_values: float = 0.0,
                 grad_checkpointing: bool = False):
        super().__init__()
        self.blocks = BlockStack([Block(dim, num_heads, mlp_ratio, qkv_bias, init_values=init_values,
                                        norm_eps=norm_eps) for _ in range(depth)], grad_checkpointing)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.head = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, num_predict: int) -> torch.Tensor:
        x = self.blocks(x)                            # [B, N_vis + M, Dd]
        return self.head(self.norm(x[:, x.shape[1] - num_predict:]))  # [B, M, out]


class PretrainVideoMAE(nn.Module):
    """`model(video, mask)` -> PretrainOutput. video (B, C, T, H, W) normalized, mask (B, N) bool.

    With `decoder_mask` (VideoMAE V2 dual masking, True = not reconstructed) the decoder predicts
    only the tokens the decoder mask keeps, and the loss covers those among them that the encoder
    masked (tokens the encoder saw are not scored).

    `num_masked` / `num_decoder_masked` (masked tokens per row, from the strategy) keep the forward
    free of device reads, so it compiles as one graph; left out, they are read from the masks.
    `drop_noise` (B, random_draws) holds the per-sample drop-path draws of the seeding protocol.
    """

    def __init__(self, cfg: PretrainConfig, target=None):
        """`target`: a `videomae.targets.ReconstructionTarget` (default: `pixel`, or `pixel_raw` when
        `cfg.norm_target` is False); it sizes the decoder head and computes the loss's targets."""
        super().__init__()
        self.cfg = cfg
        enc = cfg.encoder
        if target is None:
            from ..targets import build_target
            target = build_target("pixel" if cfg.norm_target else "pixel_raw")
        self.encoder = VideoEncoder(enc, final_norm=True)
        target.check(enc, self.encoder.grid_size)
        self.target = target   # a plain object, not a submodule: nothing it holds is trained or saved
        self._build_decoder()
        # one pass over every module, then the mask token: the official initialisation order
        self.apply(init_linear_and_norm)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def _build_decoder(self) -> None:
        """encoder_to_decoder, mask_token, decoder position table and decoder for `cfg`'s decoder
        dimensions, the head as wide as the target's tokens (initialised by the caller)."""
        cfg, enc = self.cfg, self.cfg.encoder
        if cfg.decoder_embed_dim % cfg.decoder_num_heads:
            raise ValueError(f"decoder width {cfg.decoder_embed_dim} is not a multiple of its "
                             f"{cfg.decoder_num_heads} heads")
        self.encoder_to_decoder = nn.Linear(enc.embed_dim, cfg.decoder_embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_embed_dim))
        self.decoder_pos_embed = build_pos_embed(enc.pos_embed, self.encoder.grid_size,
                                                 cfg.decoder_embed_dim)
        out_dim = self.target.width(enc)
        self.decoder = MAEDecoder(cfg.decoder_embed_dim, cfg.decoder_depth, cfg.decoder_num_heads,
                                  cfg.decoder_mlp_ratio, out_dim, enc.norm_eps, enc.qkv_bias,
                                  enc.init_values, enc.grad_checkpointing)

    def rebuild_decoder(self, dim: int, depth: int, mlp_ratio: float, num_heads: int | None = None) -> None:
        """Another decoder (freshly initialised, on the encoder's device and dtype): how a foreign
        pretraining checkpoint's decoder dimensions are met before its weights are loaded."""
        cfg = self.cfg
        cfg.decoder_embed_dim, cfg.decoder_depth, cfg.decoder_mlp_ratio = dim, depth, mlp_ratio
        cfg.decoder_num_heads = num_heads or cfg.decoder_num_heads
        weight = self.encoder.patch_embed.proj.weight
        self._build_decoder()
        for module in (self.encoder_to_decoder, self.decoder):
            module.apply(init_linear_and_norm)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        for module in (self.encoder_to_decoder, self.decoder, self.decoder_pos_embed):
            module.to(weight.device, weight.dtype)
        self.mask_token.data = self.mask_token.data.to(weight.device, weight.dtype)

    @property
    def grid_size(self):
        return self.encoder.grid_size

    @property
    def num_patches(self) -> int:
        return self.encoder.num_patches

    @property
    def tubelet_size(self) -> int:
        return self.cfg.encoder.tubelet_size

    @property
    def patch_size(self) -> int:
        return self.cfg.encoder.patch_size

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)
        self.decoder.blocks.grad_checkpointing = enable

    def resize_grid(self, num_frames: int | None = None, img_size: int | None = None) -> None:
        self.encoder.resize_grid(num_frames, img_size)
        self.decoder_pos_embed = resize_pos_embed(self.decoder_pos_embed, self.encoder.grid_size)

    def targets(self, video: torch.Tensor) -> torch.Tensor:
        """Targets of every token: (B, N, target width), float32."""
        with torch.no_grad():
            return self.target(video, self.cfg.encoder)

    @property
    def random_draws(self) -> int:
        return self.encoder.random_draws

    def forward(self, video: torch.Tensor, mask: torch.Tensor, decoder_mask: torch.Tensor | None = None,
                num_masked: int | None = None, num_decoder_masked: int | None = None,
                drop_noise: torch.Tensor | None = None) -> PretrainOutput:
        B, N = video.shape[0], self.num_patches
        check_mask_layout(mask, B, N)
        if decoder_mask is not None:
            check_mask_layout(decoder_mask, B, N, name="decoder_mask")
        split = split_tokens(mask, num_masked, decoder_mask, num_decoder_masked)
        latent = self.forward_encoder(video, split, drop_noise)   # [B, N_vis, D]
        pred = self.forward_decoder(latent, split)                # [B, M, tubelet*p*p*C]
        # with dual masking only the predicted tokens the encoder did not see are scored
        scored = None if decoder_mask is None else mask.gather(1, split.pred)
        loss, target = self.forward_loss(video, pred, split, scored)
        decoded = mask if decoder_mask is None else ~decoder_mask
        return PretrainOutput(loss=loss, pred=pred, target=target, decoded=decoded)

    def forward_encoder(self, video: torch.Tensor, split: TokenSplit,
                        drop_noise: torch.Tensor | None = None) -> torch.Tensor:
        latent = self.encoder.forward_tokens(video, split.keep, drop_noise)
        # a cls token (MAE-ST) is not decoded: MAE-ST drops it after the encoder's final norm
        return latent[:, self.encoder.num_prefix_tokens:]                  # [B, N_vis, D]

    def forward_decoder(self, latent: torch.Tensor, split: TokenSplit) -> torch.Tensor:
        x_vis = self.encoder_to_decoder(latent)                    # [B, N_vis, Dd]
        pos = self.decoder_pos_embed().to(x_vis.dtype)[0]          # [N, Dd]
        x = torch.cat([x_vis + pos[split.keep],
                       self.mask_token.to(x_vis.dtype) + pos[split.pred]], dim=1)  # [B, N_vis + M, Dd]
        return self.decoder(x, split.pred.shape[1])                # [B, M, out]

    def forward_loss(self, video: torch.Tensor, pred: torch.Tensor, split: TokenSplit,
                     scored: torch.Tensor | None = None):
        """MSE against the predicted tokens' targets (only those cubes are cut out); `scored` (B, M)
        bool selects the tokens that count. Returns (loss, target)."""
        with torch.no_grad():
            target = self.target(video, self.cfg.encoder, ids=split.pred)  # [B, M, out]
        loss = masked_mse(pred, target, None if scored is None else scored.float())
        return loss, target
