"""Action-recognition model: the encoder, mean pooling over all tokens, fc_norm, a linear head.
With `use_mean_pooling=False` (the official option, and HF's) the encoder's final norm is applied
and the head reads token 0 -- the first cube's token: these models have no cls token.

Parameter names follow the official VideoMAE fine-tuned layout (`patch_embed.*`, `blocks.*`,
`fc_norm.*`, `head.*`) so its checkpoints load as they are.
"""
from __future__ import annotations

import torch
from torch import nn

from .encoder import EncoderConfig, VideoEncoder
from .vit import init_linear_and_norm


class VideoClassifier(VideoEncoder):
    def __init__(self, cfg: EncoderConfig, num_classes: int = 400, head_drop_rate: float = 0.0,
                 use_mean_pooling: bool = True, init_scale: float = 0.001):
        super().__init__(cfg, final_norm=not use_mean_pooling)
        self.num_classes = num_classes
        self.fc_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps) if use_mean_pooling else None
        self.head_dropout = nn.Dropout(head_drop_rate)
        self.head = nn.Linear(cfg.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(lambda m: init_linear_and_norm(m, trunc_normal_std=0.02))
        if num_classes > 0:
            # a near-zero head keeps the first fine-tuning steps from wrecking the pretrained features
            with torch.no_grad():
                self.head.weight.mul_(init_scale)
                self.head.bias.mul_(init_scale)

    def forward_features(self, video: torch.Tensor, drop_noise: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled clip feature (B, D): mean of all tokens, then fc_norm; or, without mean pooling,
        token 0 after the final norm (as the official code and HF do)."""
        x = self.forward_tokens(video, None, drop_noise)  # [B, N, D]
        if self.fc_norm is not None:
            return self.fc_norm(x.mean(dim=1))
        return x[:, 0]

    def forward(self, video: torch.Tensor, drop_noise: torch.Tensor | None = None) -> torch.Tensor:
        """drop_noise: (B, random_draws) per-sample drop-path draws (seeding protocol), or None."""
        return self.head(self.head_dropout(self.forward_features(video, drop_noise)))  # [B, num_classes]
