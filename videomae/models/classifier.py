"""Action-recognition model: the encoder, a pooled clip feature, a linear head.

Pooling (`pool`), each as an official head does it:
- "mean" (official VideoMAE, and MAE-ST with its cls token): the mean of the cube tokens (a cls
  token is left out), then `fc_norm`; the encoder has no final norm.
- "token0" (official `use_mean_pooling=False`, HF's too): the encoder's final norm, then token 0 --
  the cls token when the model has one, else the first cube's token.
- "skip_first" (MAE-ST's head without a cls token): the mean of tokens 1: -- MAE-ST's
  `x[:, 1:].mean(1)` leaves out the first cube's token when there is no cls token --, then
  `fc_norm` (MAE-ST names it `norm`; the converter renames it).

Parameter names follow the official VideoMAE fine-tuned layout (`patch_embed.*`, `blocks.*`,
`fc_norm.*`, `head.*`) so its checkpoints load as they are.
"""
from __future__ import annotations

import torch
from torch import nn

from .encoder import EncoderConfig, VideoEncoder
from .vit import init_linear_and_norm

POOLS = ("mean", "token0", "skip_first")


class VideoClassifier(VideoEncoder):
    def __init__(self, cfg: EncoderConfig, num_classes: int = 400, head_drop_rate: float = 0.0,
                 use_mean_pooling: bool | None = None, init_scale: float = 0.001, pool: str = "mean"):
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}: use one of {POOLS}")
        if use_mean_pooling is False:   # the official / HF argument: token 0 after the final norm
            if pool == "skip_first":
                raise ValueError("use_mean_pooling=False means pool='token0', not 'skip_first'")
            pool = "token0"
        super().__init__(cfg, final_norm=pool == "token0")
        self.num_classes = num_classes
        self.pool = pool
        self.fc_norm = None if pool == "token0" else nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.head_dropout = nn.Dropout(head_drop_rate)
        self.head = nn.Linear(cfg.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(lambda m: init_linear_and_norm(m, trunc_normal_std=0.02))
        if num_classes > 0:
            # a near-zero head keeps the first fine-tuning steps from wrecking the pretrained features
            with torch.no_grad():
                self.head.weight.mul_(init_scale)
                self.head.bias.mul_(init_scale)

    def forward_features(self, video: torch.Tensor, drop_noise: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled clip feature (B, D), as `pool` says (see the module docstring)."""
        x = self.forward_tokens(video, None, drop_noise)  # [B, prefix + N, D]
        if self.pool == "token0":
            return x[:, 0]
        start = 1 if self.pool == "skip_first" else self.num_prefix_tokens
        return self.fc_norm(x[:, start:].mean(dim=1))

    def forward(self, video: torch.Tensor, drop_noise: torch.Tensor | None = None) -> torch.Tensor:
        """drop_noise: (B, random_draws) per-sample drop-path draws (seeding protocol), or None."""
        return self.head(self.head_dropout(self.forward_features(video, drop_noise)))  # [B, num_classes]
