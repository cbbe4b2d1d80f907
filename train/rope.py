"""3D rotary position embedding with the rotary pairs split 4:6:6 between (t, h, w).

A head of dimension d has d/2 rotation pairs; pair i rotates channels (i, i + d/2) by one angle,
so every rotation is a true 2D rotation: norms are preserved and q.k depends only on the
difference of positions. The first 4/16 of the pairs follow t, the next 6/16 h, the last 6/16 w,
each axis with its own geometric frequency ladder theta^(-j/n_axis).

The reference implementation lays the angles out half-split but rotates *adjacent* channels,
so one pair mixes two different angles; that transform is neither norm-preserving nor
shift-invariant. We do not copy it (our checkpoints are therefore not weight-compatible).
"""

from __future__ import annotations

import torch


def axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Rotation pairs per axis (t, h, w); head_dim must be a multiple of 32."""
    if head_dim % 32:
        raise ValueError(f"3D-RoPE needs head_dim divisible by 32 for the 4:6:6 split, got {head_dim}")
    unit = head_dim // 32
    return 4 * unit, 6 * unit, 6 * unit


def inv_freqs(head_dim: int, theta: float = 10000.0) -> list[torch.Tensor]:
    return [theta ** -(torch.arange(n, dtype=torch.float64) / n) for n in axis_pairs(head_dim)]


class Rope3D(torch.nn.Module):
    """Angles from explicit (t, h, w) positions; positions may be any real numbers."""

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        self.head_dim = head_dim
        freqs = torch.cat(inv_freqs(head_dim, theta)).float()
        axis = torch.cat([torch.full((n,), i) for i, n in enumerate(axis_pairs(head_dim))])
        # buffers are recomputable, so they stay out of checkpoints and releases
        self.register_buffer("freqs", freqs, persistent=False)
        self.register_buffer("axis", axis, persistent=False)

    def forward(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pos (N, 3) -> cos, sin of shape (N, head_dim / 2), in fp32."""
        angles = pos.float()[:, self.axis] * self.freqs
        return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (N, heads, head_dim) pairwise (i, i + head_dim/2); computed in fp32."""
    x1, x2 = x.float().chunk(2, dim=-1)
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).to(x.dtype)
