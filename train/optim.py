"""AdamW with decay groups, and a learning-rate schedule that is a pure function of the step.

Because the rate is recomputed from the step alone (no chained updates), a resumed run sees
exactly the curve of an uninterrupted one (the reference's chained polynomial drifts, then
jumps on resume).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from train.config import OptimConfig


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Multiplier of the peak rate at optimizer step ``step`` (0-based) of ``total``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, total - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.decay == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        shape = (1.0 - progress) ** cfg.power
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


def build_optimizer(encoder: nn.Module, heads: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """Decay on matrices; none on norms, biases and the pooling probe; heads with their own rate."""
    decay, no_decay = [], []
    for name, p in encoder.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and not name.endswith("probe") else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "lr_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
        {"params": list(heads.parameters()), "weight_decay": cfg.head_weight_decay, "lr_scale": cfg.head_lr_scale},
    ]
    # fused: one pass per parameter group instead of about ten foreach passes over every tensor
    # (foreach AdamW took 37 ms of GPU time per step over a 2M x 768 head on one H200, more than the
    # encoder's forward and backward at 32 images: bench_multigpu --profile, RESULTS.md)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=True)


def set_lr(optimizer: torch.optim.Optimizer, step: int, total: int, cfg: OptimConfig) -> float:
    lr = cfg.lr * lr_factor(step, total, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
    return lr


def step_if_finite(optimizer: torch.optim.Optimizer, *norms: torch.Tensor) -> bool:
    """Apply the step only when every gradient norm is finite; a NaN/inf step is dropped, not learned.

    One bad micro-batch (an overflow in half precision, a degenerate sample) would otherwise
    write NaN into every weight and the optimizer state, and the run would go on training
    nothing. The norms are global (reduced across ranks), so every rank takes the same decision.
    """
    ok = all(bool(torch.isfinite(n)) for n in norms)
    if ok:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return ok
