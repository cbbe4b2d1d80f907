"""The encoder: a plain pre-norm ViT over packed sparse tokens with 3D-RoPE and a PMA pooling head.

No CLS token and no absolute position embedding: positions enter only through RoPE, so any
image size, any sparse codec selection and any collage shape is just a token set. The patch
embedding is a Linear on flattened patches (equal to a stride-p conv without bias). This file
knows nothing of distribution, checkpointing or compilation (see ``train.parallelize``).
"""

from __future__ import annotations

import torch
from torch import nn

from train.config import ModelConfig
from train.packing import Packed, attend, pool_attend
from train.rope import Rope3D, apply_rope


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, cos, sin, packed: Packed):
        n, dim = x.shape
        q, k, v = self.qkv(x).view(n, 3, self.heads, dim // self.heads).unbind(1)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return self.proj(attend(q, k, v, packed).reshape(n, dim))


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x, cos, sin, packed: Packed):
        x = x + self.attn(self.norm1(x), cos, sin, packed)
        return x + self.mlp(self.norm2(x))


class PoolingHead(nn.Module):
    """Multihead attention pooling (PMA): a learned probe attends to each sample's tokens."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.heads = heads
        self.probe = nn.Parameter(torch.randn(1, dim) * 0.02)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.RMSNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x: torch.Tensor, packed: Packed) -> torch.Tensor:
        n, dim = x.shape
        b, d = packed.batch, dim // self.heads
        q = self.q(self.probe).view(1, self.heads, d).expand(b, -1, -1)
        k, v = self.kv(x).view(n, 2, self.heads, d).unbind(1)
        y = self.proj(pool_attend(q, k, v, packed).reshape(b, dim))
        return y + self.mlp(self.norm(y.float()))  # fp32 norm: one row per sample, keeps the fused kernel


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dim, depth, heads, hidden = cfg.dims
        self.cfg = cfg
        self.dim = dim
        self.patch_embed = nn.Linear(3 * cfg.patch * cfg.patch, dim, bias=False)
        self.rope = Rope3D(dim // heads, cfg.rope_theta)
        self.norm_pre = nn.LayerNorm(dim, eps=1e-6)
        self.blocks = nn.ModuleList(Block(dim, heads, hidden) for _ in range(depth))
        self.norm_post = nn.LayerNorm(dim, eps=1e-6)
        self.head = PoolingHead(dim, heads, hidden)
        self.apply(_init)

    def forward_features(self, packed: Packed, hidden_states: list | None = None, run_block=None) -> torch.Tensor:
        """Packed patches -> per-token features (N, dim) after the final norm.

        ``hidden_states``, when given, receives the embedded tokens and every block's output (N, dim)
        each: the states a ``transformers`` model returns for ``output_hidden_states``.
        ``run_block(block, x, cos, sin, packed)`` calls each block in place of ``block(...)``: the
        release's hook for transformers' gradient checkpointing (training wraps the blocks instead,
        in ``train.parallelize``).
        """
        cos, sin = self.rope(packed.pos)
        x = self.norm_pre(self.patch_embed(packed.tokens))
        for block in self.blocks:
            if hidden_states is not None:
                hidden_states.append(x)
            x = block(x, cos, sin, packed) if run_block is None else run_block(block, x, cos, sin, packed)
        if hidden_states is not None:
            hidden_states.append(x)
        return self.norm_post(x)

    def forward(self, packed: Packed) -> torch.Tensor:
        """Packed patches -> one embedding per sample (B, dim)."""
        return self.head(self.forward_features(packed), packed)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward = 3x forward) at a given sample length."""
        dim, depth, _, hidden = self.cfg.dims
        dense = 2 * (4 * dim * dim + 2 * dim * hidden) * depth + 2 * 3 * self.cfg.patch**2 * dim
        attention = 4 * seq_len * dim * depth
        return 3.0 * (dense + attention)


def _init(module: nn.Module):
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
