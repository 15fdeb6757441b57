"""ViT building blocks in the official VideoMAE layout (fused qkv with separate q/v biases)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample.

    `forward(x, noise)` takes each sample's keep decision from `noise` (B,) uniforms in [0, 1) --
    drawn per the seeding protocol from (SEED, step, global row), so the decision does not depend on
    the world size or on accumulation. Without `noise` it draws from torch's global generator.
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        if noise is None:
            kept = x.new_empty(shape).bernoulli_(keep)
        else:
            kept = (noise < keep).to(x.dtype).view(shape)
        return x * kept / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Attention(nn.Module):
    """Multi-head self-attention with `F.scaled_dot_product_attention`.

    One fused `qkv` weight without bias plus `q_bias` and `v_bias`; the key bias is fixed at zero
    (softmax is invariant to it), which is what official VideoMAE and BEiT do.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, head_dim: int | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads
        inner = self.head_dim * num_heads
        self.qkv = nn.Linear(dim, inner * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(inner))
            self.v_bias = nn.Parameter(torch.zeros(inner))
        else:
            self.q_bias = self.v_bias = None
        self.attn_drop = attn_drop
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape  # x: [B, N, D]
        # call the qkv module (not F.linear on its weight) so wrappers that gather parameters
        # per module on forward -- ZeRO-3, FSDP -- see it used
        qkv = self.qkv(x)
        if self.q_bias is not None:
            qkv = qkv + torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, -1)  # [B, N, heads * head_dim]
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block; `init_values` > 0 turns on layer scale (`gamma_1`, `gamma_2`)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 init_values: float = 0.0, norm_eps: float = 1e-6, mlp_hidden: int | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_hidden or int(dim * mlp_ratio), drop=drop)
        if init_values > 0:
            self.gamma_1 = nn.Parameter(init_values * torch.ones(dim))
            self.gamma_2 = nn.Parameter(init_values * torch.ones(dim))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, N, D]; noise: [B, 2] per-sample uniforms for the two drop-path decisions, or None."""
        dropping = noise is not None and isinstance(self.drop_path, DropPath)
        n1, n2 = (noise[:, 0], noise[:, 1]) if dropping else (None, None)
        if self.gamma_1 is None:
            x = x + self._drop_path(self.attn(self.norm1(x)), n1)
            return x + self._drop_path(self.mlp(self.norm2(x)), n2)
        x = x + self._drop_path(self.gamma_1 * self.attn(self.norm1(x)), n1)
        return x + self._drop_path(self.gamma_2 * self.mlp(self.norm2(x)), n2)

    def _drop_path(self, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        return self.drop_path(x, noise) if isinstance(self.drop_path, DropPath) else x


class BlockStack(nn.ModuleList):
    """Blocks run in sequence, optionally with activation checkpointing per block.

    Checkpointing trades one extra forward per block for not storing its activations: the knob
    that lets ViT-H / ViT-g pretraining fit (official scripts turn it on there).
    """

    def __init__(self, blocks, grad_checkpointing: bool = False):
        super().__init__(blocks)
        self.grad_checkpointing = grad_checkpointing

    @property
    def random_draws(self) -> int:
        """Per-sample uniforms one forward consumes: two per block (attention and MLP branch) when
        any block has drop path, else 0."""
        return 2 * len(self) if any(isinstance(b.drop_path, DropPath) for b in self) else 0

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, N, D]; noise: [B, random_draws] uniforms (see DropPath), or None."""
        for i, block in enumerate(self):
            block_noise = None if noise is None else noise[:, 2 * i:2 * i + 2]
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, block_noise, use_reentrant=False)
            else:
                x = block(x, block_noise)
        return x


def init_linear_and_norm(module: nn.Module, trunc_normal_std: float | None = None) -> None:
    """Official VideoMAE init: Linear xavier-uniform (fine-tuning model: trunc-normal .02) with zero
    bias, LayerNorm weight 1 / bias 0. Apply with `model.apply`."""
    if isinstance(module, nn.Linear):
        if trunc_normal_std is None:
            nn.init.xavier_uniform_(module.weight)
        else:
            nn.init.trunc_normal_(module.weight, std=trunc_normal_std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
