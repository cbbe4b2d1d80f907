"""AdamW with decay groups, the heads' sampled-row AdamW, and a rate that is a pure function of the step.

Because the rate is recomputed from the step alone (no chained updates), a resumed run sees
exactly the curve of an uninterrupted one (the reference's chained polynomial drifts, then
jumps on resume).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from train.config import OptimConfig
from train.loss import ConceptHeads, local_tensor
from train.scored_rows import RowGrad


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


def build_optimizer(encoder: nn.Module, heads: ConceptHeads, cfg: OptimConfig) -> torch.optim.AdamW:
    """Decay on matrices; none on norms, biases and the pooling probe; heads with their own rate.

    Heads built with ``sampled_update`` are left out: ``SampledRowAdamW`` updates them.
    """
    decay, no_decay = [], []
    for name, p in encoder.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and not name.endswith("probe") else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "lr_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    if not heads.sampled_update:
        groups.append(
            {"params": list(heads.parameters()), "weight_decay": cfg.head_weight_decay, "lr_scale": cfg.head_lr_scale}
        )
    # fused: one pass per parameter group instead of about ten foreach passes over every tensor
    # (foreach AdamW took 37 ms of GPU time per step over a 2M x 768 head on one H200, more than the
    # encoder's forward and backward at 32 images: bench_multigpu --profile, RESULTS.md)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=True)


class SampledRowAdamW:
    """AdamW on the centre rows a step scored: the heads' update under ``optim.head_update = "sampled"``.

    Partial FC scores a tenth of a head's rows per step. Updating the whole matrix means a
    full-size gradient and AdamW passes over every row and both moments (at 2M x 1024 that was
    most of the head's 24.7 % of a ViT-L step: RESULTS.md, Trainer). Here the scored rows'
    gradient is clipped and applied with torch AdamW's formulas (decoupled decay, bias correction
    by the head's update count); rows not scored keep weights and moments as they are, as Partial
    FC v1 updated its sampled sub-matrix. Every row scored on every step (sample_rate 1): AdamW.
    Duck-types the parts of an optimizer the loop uses (``param_groups``, ``step``, ``zero_grad``).
    """

    def __init__(self, heads: ConceptHeads, cfg: OptimConfig, overlap: bool = True):
        if not heads.sampled_update:
            raise ValueError("SampledRowAdamW needs heads built with sampled_update=True")
        self.heads = list(heads.heads.values())
        self.betas, self.eps = tuple(cfg.betas), cfg.eps
        self.param_groups = [{"lr": cfg.lr, "lr_scale": cfg.head_lr_scale, "weight_decay": cfg.head_weight_decay}]
        self.grads: list[RowGrad] = []
        self.coef: torch.Tensor | None = None
        self.overlap = overlap
        self.streams: dict[torch.device, torch.cuda.Stream] = {}

    @torch.no_grad()
    def clip(self, max_norm: float) -> torch.Tensor:
        """Collect every head's row gradients; their global norm, and clip_grad_norm_'s coefficient for ``step``.

        The norm pass stays on the main stream: on the side stream it ran beside the encoder's clip and
        step, which are bandwidth-bound too, and saved nothing (RESULTS.md, Trainer).
        """
        self.grads = [head.take_row_grad() for head in self.heads]
        w = self.heads[0].local_weight()
        sq = torch.zeros((), device=w.device)
        for head, g in zip(self.heads, self.grads, strict=True):
            sq = sq + row_grad_sq(head.local_weight(), g)
            g.scored = None  # only the norm reads the GEMM's copy: not held through the update
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sq)  # ranks own disjoint rows: squares add up
        norm = sq.sqrt()
        self.coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)  # applied inside the update, not as a pass of its own
        return norm

    @torch.no_grad()
    def step(self):
        if not self.grads:  # not clipped: collect the gradients unscaled
            self.grads = [head.take_row_grad() for head in self.heads]
            self.coef = None
        group = self.param_groups[0]
        b1, b2 = self.betas
        for salt, (head, g) in enumerate(zip(self.heads, self.grads, strict=True)):
            if g.rows.numel() == 0:
                continue
            head.updates += 1  # on the device: reading it back would make the host wait for the step
            w, m, v = head.local_weight(), local_tensor(head.exp_avg), local_tensor(head.exp_avg_sq)
            coef = self.coef if self.coef is not None else torch.ones((), device=w.device)
            with self._side_stream(head, w.device, (g.rows, g.p, g.b, coef)):
                hyper = (group["lr"], group["weight_decay"], b1, b2, self.eps)
                adamw_rows(w, m, v, g, coef, *hyper, head.updates, salt=salt)
        self.grads, self.coef = [], None

    @contextlib.contextmanager
    def _side_stream(self, head, device: torch.device, inputs: tuple[torch.Tensor, ...]):
        """On CUDA (with ``overlap``), run the block on a side stream and leave ``head`` an event to wait for.

        The row update reads and writes about 26 bytes per scored entry (5 GB a step at 2M x 1024 classes)
        and does almost no arithmetic; queued behind the encoder's step it adds its whole time, on a stream
        of its own it shares the card with the next forward's GEMMs. The inputs made on the main stream
        are marked as used by the side stream, so the allocator does not hand their memory out before the
        update has read them.
        """
        if not (self.overlap and device.type == "cuda"):
            yield
            return
        main = torch.cuda.current_stream(device)
        side = self.streams.setdefault(device, torch.cuda.Stream(device))
        side.wait_stream(main)
        with torch.cuda.stream(side):
            yield
        for t in inputs:
            t.record_stream(side)
        head.updated, head.updated_device = side.record_event(), device

    def zero_grad(self, set_to_none: bool = True):
        self.grads, self.coef = [], None
        for head in self.heads:
            head.pending = []


def row_grad_sq(w: torch.Tensor, g: RowGrad) -> torch.Tensor:
    """Squared norm of the rows' gradient (``RowGrad.for_norm``); on CUDA one pass over its factors and
    the GEMM's copy of the rows, never written out."""
    if g.rows.numel() == 0:
        return torch.zeros((), device=w.device)
    if w.is_cuda:
        from train.row_kernels import row_squares

        return row_squares(w, g).sum()
    return g.for_norm(w).square().sum()


def adamw_rows(w, m, v, g: RowGrad, coef, lr, wd, b1, b2, eps, step, salt=0):
    """torch AdamW's update of ``w[g.rows]`` and its moments, with the gradient ``g`` times ``coef``, in place.

    ``step``: the update count (a 0-d integer tensor, this update included) for the bias corrections.
    On CUDA one Triton pass reads each scored row's weight, moments and gradient factors once and
    writes them back (eager torch makes three gathers, six elementwise passes and three scatters),
    and the bias corrections are computed on the device, so the host never waits; elsewhere the
    same formulas in torch. bf16 moments are computed in fp32 and stored with stochastic rounding
    (round-to-nearest would lose every increment under half a bf16 step: v's (1 - b2) g^2 is mostly
    that small), from random bits seeded by ``step`` and ``salt`` (the head), so a rerun draws the same.
    """
    if w.is_cuda:
        from train.row_kernels import adamw_rows_cuda

        adamw_rows_cuda(w, m, v, g, coef, lr, wd, b1, b2, eps, step, rounding_seed(step.to(w.device), salt))
    else:
        _adamw_rows_torch(w, m, v, g, coef, lr, wd, b1, b2, eps, step, salt)


def _adamw_rows_torch(w, m, v, g, coef, lr, wd, b1, b2, eps, step, salt=0):
    t = int(step)
    bc1, bc2_sqrt = 1 - b1**t, math.sqrt(1 - b2**t)
    rows = g.rows
    grad = g.materialize(w) * coef
    wr, mr, vr = w[rows], m[rows].float(), v[rows].float()
    wr.mul_(1 - lr * wd)
    mr.lerp_(grad, 1 - b1)
    vr.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    wr.addcdiv_(mr, (vr.sqrt() / bc2_sqrt).add_(eps), value=-lr / bc1)
    w.index_copy_(0, rows, wr)
    if m.dtype == torch.bfloat16:
        gen = torch.Generator(device=w.device).manual_seed(int(rounding_seed(torch.tensor(t), salt)))
        mr, vr = (round_bf16(x, torch.randint(0, 1 << 16, x.shape, generator=gen, device=x.device)) for x in (mr, vr))
    m.index_copy_(0, rows, mr)
    v.index_copy_(0, rows, vr)


def round_bf16(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """fp32 ``x`` to bf16, rounded up (in magnitude) with probability of the 16 dropped bits' share: the
    expected value is ``x``. ``noise``: random integers in [0, 2^16), one per entry."""
    bits = x.contiguous().view(torch.int32) + noise.to(torch.int32)
    return (bits & -(1 << 16)).view(torch.float32).to(torch.bfloat16)


def rounding_seed(step: torch.Tensor, salt: int) -> torch.Tensor:
    """Seed of the stochastic rounding of update ``step`` of head ``salt``: a checkpoint holds the update
    count, so a resumed run draws the same bits."""
    return (step.to(torch.int64) * 1_000_003 + salt).reshape(1)


def set_lr(optimizers: Sequence, step: int, total: int, cfg: OptimConfig) -> float:
    lr = cfg.lr * lr_factor(step, total, cfg)
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
    return lr


def step_if_finite(optimizers: Sequence, *norms: torch.Tensor) -> bool:
    """Apply the step only when every gradient norm is finite; a NaN/inf step is dropped, not learned.

    One bad micro-batch (an overflow in half precision, a degenerate sample) would otherwise
    write NaN into every weight and the optimizer state, and the run would go on training
    nothing. The norms are global (reduced across ranks), so every rank takes the same decision.
    """
    ok = all(bool(torch.isfinite(n)) for n in norms)
    for optimizer in optimizers:
        if ok:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return ok
