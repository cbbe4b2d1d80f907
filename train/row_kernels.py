"""Triton kernels over the centre rows a partial-FC step scores (imported on first use on CUDA).

Each reads a scored row once per pass: the gather for the GEMM (``train.scored_rows``), the squared
norm of the factored gradient and the AdamW update (``train.optim``). The CPU tests run them under
Triton's interpreter against the torch formulas.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_R, BLOCK_D = 8, 256  # the row passes over (rows, columns) tiles


@triton.jit
def _gather_kernel(W, INDEX, OUT, S, n, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    d = tl.arange(0, BLOCK_D)
    mask = (r[:, None] < n) & (d[None, :] < D)
    row = tl.load(INDEX + r, mask=r < n, other=0).to(tl.int64)
    x = tl.load(W + row[:, None] * D + d[None, :], mask=mask, other=0.0)
    norm = tl.sqrt_rn(tl.sum(x * x, axis=1))
    tl.store(S + r, tl.div_rn(1.0, tl.maximum(norm, 1e-12)), mask=r < n)
    tl.store(OUT + r[:, None].to(tl.int64) * D + d[None, :], x.to(OUT.dtype.element_ty), mask=mask)


def gather_rows_cuda(w: torch.Tensor, index: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``w[index]`` in ``dtype`` and the rows' inverse norms, one read of each row (a whole row per tile)."""
    n, d = index.numel(), w.shape[1]
    out = torch.empty(n, d, dtype=dtype, device=w.device)
    s = torch.empty(n, dtype=torch.float32, device=w.device)
    if n:
        block_d = triton.next_power_of_2(d)
        block_r = max(1, 4096 // block_d)
        _gather_kernel[(-(-n // block_r),)](w, index, out, s, n, d, BLOCK_R=block_r, BLOCK_D=block_d)
    return out, s


@triton.jit
def _grad_tile(W, ROWS, P, B, r, d, n_rows, D):
    """The gradient tile ``p + b * w`` of rows r, columns d; the weights it read, their offsets and mask."""
    mask = (r[:, None] < n_rows) & (d[None, :] < D)
    row = tl.load(ROWS + r, mask=r < n_rows, other=0).to(tl.int64)
    at = row[:, None] * D + d[None, :]
    w = tl.load(W + at, mask=mask, other=0.0).to(tl.float32)
    p = tl.load(P + r[:, None].to(tl.int64) * D + d[None, :], mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + r, mask=r < n_rows, other=0.0)
    return p + b[:, None] * w, w, at, mask


@triton.jit
def _squares_kernel(W, ROWS, P, B, OUT, n_rows, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        g, _, _, _ = _grad_tile(W, ROWS, P, B, r, d0 + tl.arange(0, BLOCK_D), n_rows, D)
        acc += tl.sum(g * g, axis=1)
    tl.store(OUT + r, acc, mask=r < n_rows)


def row_squares(w: torch.Tensor, g) -> torch.Tensor:
    """Per scored row, the squared norm of its gradient ``g`` (a ``RowGrad``, ``for_norm``), never written out."""
    n, d = g.p.shape
    out = torch.empty(n, dtype=torch.float32, device=w.device)
    if g.scored is not None:  # the GEMM's contiguous copy: row i is row i
        w, rows = g.scored, torch.arange(n, device=w.device)
    else:
        rows = g.rows
    _squares_kernel[(-(-n // BLOCK_R),)](w, rows, g.p, g.b, out, n, d, BLOCK_R=BLOCK_R, BLOCK_D=BLOCK_D)
    return out


@triton.jit
def _round_bf16(x, noise):
    """fp32 ``x`` to bf16, rounded up with probability of the 16 dropped bits' share (``noise``: 16 random bits)."""
    bits = x.to(tl.uint32, bitcast=True) + noise
    return (bits & 0xFFFF0000).to(tl.float32, bitcast=True).to(tl.bfloat16)


@triton.jit
def _adamw_kernel(
    W, M, V, ROWS, P, B, COEF, BC, SEED, n_rows, D, lr, wd, b1, b2, eps,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, STOCHASTIC: tl.constexpr,
):  # fmt: skip
    bc1, bc2_sqrt = tl.load(BC), tl.load(BC + 1)
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    g, w, at, mask = _grad_tile(W, ROWS, P, B, r, d, n_rows, D)
    g = g * tl.load(COEF)
    m = tl.load(M + at, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(V + at, mask=mask, other=0.0).to(tl.float32)
    w = w * (1 - lr * wd)
    m = m + (1 - b1) * (g - m)
    v = v * b2 + (1 - b2) * g * g
    # IEEE-rounded sqrt and division (Triton's defaults are approximate), as torch computes them
    w = w - tl.div_rn((lr / bc1) * m, tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps)
    tl.store(W + at, w, mask=mask)
    if STOCHASTIC:  # bf16 moments: 32 random bits per entry (Philox of the step and the entry), 16 for each
        noise = tl.randint(tl.load(SEED), at.to(tl.uint32)).to(tl.uint32, bitcast=True)
        tl.store(M + at, _round_bf16(m, noise & 0xFFFF), mask=mask)
        tl.store(V + at, _round_bf16(v, noise >> 16), mask=mask)
    else:
        tl.store(M + at, m, mask=mask)
        tl.store(V + at, v, mask=mask)


def adamw_rows_cuda(w, m, v, g, coef, lr, wd, b1, b2, eps, step, seed):
    """``train.optim.adamw_rows`` in one pass: each scored row's weight, moments and gradient factors read once.

    ``seed``: a 1-element int64 tensor on the device, the stochastic rounding's (bf16 moments)."""
    bf16 = m.dtype == torch.bfloat16
    for t, dtype in ((w, torch.float32), (m, m.dtype), (v, m.dtype)):
        if not t.is_contiguous() or t.dtype != dtype or dtype not in (torch.float32, torch.bfloat16):
            raise ValueError("adamw_rows: centres (fp32) and moments (both fp32 or both bf16) must be contiguous")
    if not g.p.is_contiguous():
        raise ValueError("adamw_rows: the gradient factor p must be contiguous")
    n, d = g.p.shape
    t = step.to(device=w.device, dtype=torch.float64)  # the host's float64 formulas, rounded to fp32 at the end
    bc = torch.stack([1 - b1**t, (1 - b2**t).sqrt()]).float()
    grid = (-(-n // BLOCK_R), -(-d // BLOCK_D))
    _adamw_kernel[grid](
        w, m, v, g.rows, g.p, g.b.float(), coef.float().reshape(1), bc, seed, n, d, lr, wd, b1, b2, eps,
        BLOCK_R=BLOCK_R, BLOCK_D=BLOCK_D, STOCHASTIC=bf16,
    )  # fmt: skip
