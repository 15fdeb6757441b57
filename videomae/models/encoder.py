"""The video ViT encoder shared by the pretraining model and the classifier."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .masks import check_mask_layout, split_tokens
from .pos_embed import build_pos_embed, resize_pos_embed
from .tokenizer import CubeEmbed
from .vit import Block, BlockStack


@dataclass
class EncoderConfig:
    img_size: int = 224
    patch_size: int = 16
    num_frames: int = 16
    tubelet_size: int = 2
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    init_values: float = 0.0        # layer scale off by default, as official VideoMAE
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    norm_eps: float = 1e-6
    pos_embed: str = "sinusoid"     # or "separable" (MAE-ST)
    cls_token: bool = False         # MAE-ST's cls_embed: a learned token put before the cube tokens
    grad_checkpointing: bool = False


class VideoEncoder(nn.Module):
    """Cube tokenizer + position embedding + blocks + final norm.

    `forward(video)` encodes every token; `forward(video, mask)` only the visible ones (mask True =
    masked), embedding only their cubes. With `cls_token` the output has one more token, first
    (`num_prefix_tokens`): MAE-ST's cls token, which takes no position embedding of its own (MAE-ST's
    `pos_embed_class` is a constant added to it, folded into it on load). `drop_noise` (B, random_draws) carries the per-sample
    drop-path draws of the seeding protocol (None: torch's global generator).
    """

    def __init__(self, cfg: EncoderConfig, final_norm: bool = True):
        super().__init__()
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        self.patch_embed = CubeEmbed(cfg.img_size, cfg.patch_size, cfg.num_frames, cfg.tubelet_size,
                                     cfg.in_chans, cfg.embed_dim)
        self.pos_embed = build_pos_embed(cfg.pos_embed, self.patch_embed.grid_size, cfg.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim)) if cfg.cls_token else None
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        # stochastic depth grows linearly with depth (python floats: also works on the meta device)
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = BlockStack(
            [Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.drop_rate,
                   cfg.attn_drop_rate, rate, cfg.init_values, cfg.norm_eps) for rate in rates],
            grad_checkpointing=cfg.grad_checkpointing)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps) if final_norm else nn.Identity()

    @property
    def grid_size(self) -> tuple[int, int, int]:
        return self.patch_embed.grid_size

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the cube tokens in the encoder's output: 1 with a cls token, else 0."""
        return 0 if self.cls_token is None else 1

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.blocks.grad_checkpointing = enable

    def resize_grid(self, num_frames: int | None = None, img_size: int | None = None) -> None:
        """Adapt the position embedding to another clip length or resolution."""
        cfg = self.cfg
        t = (num_frames or cfg.num_frames) // cfg.tubelet_size
        s = (img_size or cfg.img_size) // cfg.patch_size
        self.pos_embed = resize_pos_embed(self.pos_embed, (t, s, s))
        pe = self.patch_embed
        pe.grid_size = (t, s, s)
        pe.num_patches = t * s * s
        cfg.num_frames, cfg.img_size = num_frames or cfg.num_frames, img_size or cfg.img_size

    @property
    def random_draws(self) -> int:
        """Columns of `drop_noise` a training forward uses (0 without drop path)."""
        return self.blocks.random_draws

    def embed(self, video: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens + position embedding: every token, or those at `ids` (B, n) ascending; the cls
        token, if any, first."""
        t, p = self.cfg.tubelet_size, self.cfg.patch_size
        (gt, gh, gw) = self.grid_size
        if video.ndim != 5 or tuple(video.shape[2:]) != (gt * t, gh * p, gw * p):
            raise ValueError(f"video of shape {tuple(video.shape)} does not fit the model, built for "
                             f"(B, C, {gt * t}, {gh * p}, {gw * p}) clips (grid {self.grid_size}): pass "
                             "matching num_frames / img_size or resize the model's grid")
        # the loader's float32 clip meets bf16/fp16 weights here; targets keep the float32 original
        x = self.patch_embed(video.to(self.patch_embed.proj.weight.dtype), ids)  # [B, n, D]
        pos = self.pos_embed().to(x.dtype)                                         # [1, N, D]
        x = x + (pos if ids is None else pos[0][ids])
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
        return self.pos_drop(x)

    def forward(self, video: torch.Tensor, mask: torch.Tensor | None = None, num_masked: int | None = None,
                drop_noise: torch.Tensor | None = None) -> torch.Tensor:
        keep = None
        if mask is not None:
            check_mask_layout(mask, video.shape[0], self.num_patches)
            keep = split_tokens(mask, num_masked).keep
        return self.forward_tokens(video, keep, drop_noise)

    def forward_tokens(self, video: torch.Tensor, keep: torch.Tensor | None = None,
                       drop_noise: torch.Tensor | None = None) -> torch.Tensor:
        """Encode the tokens at `keep` (B, N_vis), or all of them: [B, num_prefix_tokens + n, D]."""
        x = self.embed(video, keep)
        return self.norm(self.blocks(x, drop_noise))
