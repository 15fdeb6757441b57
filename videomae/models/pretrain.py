"""The asymmetric masked autoencoder: the encoder sees only visible cubes, a light decoder
reconstructs the masked ones from mask tokens."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from .encoder import EncoderConfig, VideoEncoder, check_mask
from .pos_embed import build_pos_embed, resize_pos_embed
from .targets import cube_targets, masked_mse
from .vit import Block, BlockStack, init_linear_and_norm


@dataclass
class PretrainConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder_embed_dim: int = 384
    decoder_depth: int = 4
    decoder_num_heads: int = 6
    decoder_mlp_ratio: float = 4.0
    norm_target: bool = True   # per-cube normalized pixels (official default); False: raw [0, 1]


class PretrainOutput(NamedTuple):
    """A NamedTuple, not a dataclass: DeepSpeed ZeRO-3 hooks (and torch.compile) see inside tuples,
    so the backward pass re-gathers the parameters that produced these tensors."""
    loss: torch.Tensor          # scalar
    pred: torch.Tensor          # (B, M, tubelet*p*p*C): decoded tokens in ascending index order
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
    """

    def __init__(self, cfg: PretrainConfig):
        super().__init__()
        self.cfg = cfg
        enc = cfg.encoder
        self.encoder = VideoEncoder(enc, final_norm=True)
        self.encoder_to_decoder = nn.Linear(enc.embed_dim, cfg.decoder_embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_embed_dim))
        self.decoder_pos_embed = build_pos_embed(enc.pos_embed, self.encoder.grid_size,
                                                 cfg.decoder_embed_dim)
        out_dim = enc.tubelet_size * enc.patch_size ** 2 * enc.in_chans
        self.decoder = MAEDecoder(cfg.decoder_embed_dim, cfg.decoder_depth, cfg.decoder_num_heads,
                                  cfg.decoder_mlp_ratio, out_dim, enc.norm_eps, enc.qkv_bias,
                                  enc.init_values, enc.grad_checkpointing)
        self.apply(init_linear_and_norm)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

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
        return cube_targets(video, self.tubelet_size, self.patch_size, normalize=self.cfg.norm_target)

    def forward(self, video: torch.Tensor, mask: torch.Tensor,
                decoder_mask: torch.Tensor | None = None) -> PretrainOutput:
        B, N = video.shape[0], self.num_patches
        check_mask(mask, B, N)
        decoded = mask
        if decoder_mask is not None:
            check_mask(decoder_mask, B, N, name="decoder_mask")
            decoded = ~decoder_mask

        latent = self.encoder.encode_visible(video, mask)  # [B, N_vis, D]
        x_vis = self.encoder_to_decoder(latent)        # [B, N_vis, Dd]
        Dd = x_vis.shape[-1]
        pos = self.decoder_pos_embed().to(x_vis.dtype).expand(B, -1, -1)  # [B, N, Dd]
        pos_vis = pos[~mask].reshape(B, -1, Dd)
        pos_dec = pos[decoded].reshape(B, -1, Dd)      # [B, M, Dd], ascending token index
        x = torch.cat([x_vis + pos_vis, self.mask_token.to(x_vis.dtype) + pos_dec], dim=1)
        pred = self.decoder(x, pos_dec.shape[1])       # [B, M, tubelet*p*p*C]

        with torch.no_grad():
            target = self.targets(video)[decoded].reshape(B, pred.shape[1], -1)
        weight = None if decoder_mask is None else mask[decoded].reshape(B, -1).float()
        loss = masked_mse(pred, target, weight)
        return PretrainOutput(loss=loss, pred=pred, target=target, decoded=decoded)
