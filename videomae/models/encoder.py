"""The video ViT encoder shared by the pretraining model and the classifier."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

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
    grad_checkpointing: bool = False


def check_mask(mask: torch.Tensor, batch_size: int, num_tokens: int, name: str = "mask") -> int:
    """Validate a token mask (True = masked); return the number of masked tokens per sample."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        kind = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{name} must be a torch.bool tensor (True = masked), got {kind}; "
                         "a 0/1 integer mask would index tokens instead of selecting them")
    if tuple(mask.shape) != (batch_size, num_tokens):
        raise ValueError(f"{name} must have shape (B, N) = ({batch_size}, {num_tokens}), "
                         f"got {tuple(mask.shape)}")
    counts = mask.sum(dim=1)
    if batch_size and bool((counts != counts[0]).any()):
        raise ValueError(f"every sample must mask the same number of tokens; {name} counts per "
                         f"sample are {counts.tolist()}")
    return int(counts[0]) if batch_size else 0


class VideoEncoder(nn.Module):
    """Cube tokenizer + position embedding + blocks + final norm.

    `forward(video, mask)` encodes only the visible tokens (mask True = masked).
    """

    def __init__(self, cfg: EncoderConfig, final_norm: bool = True):
        super().__init__()
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        self.patch_embed = CubeEmbed(cfg.img_size, cfg.patch_size, cfg.num_frames, cfg.tubelet_size,
                                     cfg.in_chans, cfg.embed_dim)
        self.pos_embed = build_pos_embed(cfg.pos_embed, self.patch_embed.grid_size, cfg.embed_dim)
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

    def embed(self, video: torch.Tensor) -> torch.Tensor:
        # the loader's float32 clip meets bf16/fp16 weights here; targets keep the float32 original
        x = self.patch_embed(video.to(self.patch_embed.proj.weight.dtype))  # [B, N, D]
        if x.shape[1] != self.num_patches:
            raise ValueError(f"video of shape {tuple(video.shape)} gives {x.shape[1]} tokens, the model "
                             f"was built for grid {self.grid_size} ({self.num_patches} tokens): pass "
                             "matching num_frames / img_size or resize the model's grid")
        return self.pos_drop(x + self.pos_embed().to(x.dtype))

    def forward(self, video: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            check_mask(mask, video.shape[0], self.num_patches)
        return self.encode_visible(video, mask)

    def encode_visible(self, video: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """`forward` for a mask the caller has already validated."""
        x = self.embed(video)  # [B, N, D]
        B, N, D = x.shape
        if mask is not None:
            x = x[~mask].reshape(B, -1, D)  # [B, N_visible, D], ascending token order
        return self.norm(self.blocks(x))
