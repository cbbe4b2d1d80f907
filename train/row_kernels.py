"""Triton kernels over the centre rows a partial-FC step scores (imported on first use on CUDA).

Each reads a scored row once per pass: the gather for the GEMM (``train.scored_rows``) and the AdamW
update (``train.optim``), which forms the row gradient from its factors in the same pass. The CPU
tests run them under Triton's interpreter against the torch formulas.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_R, BLOCK_D = 8, 256  # the update's (rows, columns) tiles with a given p
FACTORED_BLOCKS = (64, 128, 32, 4)  # p = d^T e formed in the pass: rows, columns, batch (the dot's K), warps


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
def _grad_tile(
    W, ROWS, P, B, DR, E, r, d, n_rows, n_batch, D,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, FACTORED: tl.constexpr,
):  # fmt: skip
    """The gradient tile ``p + b * w`` of rows r, columns d; the weights it read, their offsets and mask.

    ``FACTORED``: ``p = d^T e`` from the (n_batch, n_rows) ``DR`` and the (n_batch, D) ``E``, summed over the
    batch in steps of ``BLOCK_K`` on the tensor cores (fp32 accumulation); else ``p`` read from ``P``.
    """
    mask = (r[:, None] < n_rows) & (d[None, :] < D)
    row = tl.load(ROWS + r, mask=r < n_rows, other=0).to(tl.int64)
    at = row[:, None] * D + d[None, :]
    w = tl.load(W + at, mask=mask, other=0.0).to(tl.float32)
    if FACTORED:
        p = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
        for k0 in range(0, n_batch, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            at_d = k[None, :].to(tl.int64) * n_rows + r[:, None]
            dt = tl.load(DR + at_d, mask=(k[None, :] < n_batch) & (r[:, None] < n_rows), other=0.0)
            et = tl.load(E + k[:, None] * D + d[None, :], mask=(k[:, None] < n_batch) & (d[None, :] < D), other=0.0)
            if DR.dtype.element_ty == tl.float32:  # no TF32: the fp32 GEMM it stands for
                p = tl.dot(dt, et, p, input_precision="ieee")
            else:
                p = tl.dot(dt, et, p)
    else:
        p = tl.load(P + r[:, None].to(tl.int64) * D + d[None, :], mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + r, mask=r < n_rows, other=0.0)
    return p + b[:, None] * w, w, at, mask


@triton.jit
def _round_bf16(x, noise):
    """fp32 ``x`` to bf16, rounded up with probability of the 16 dropped bits' share (``noise``: 16 random bits)."""
    bits = x.to(tl.uint32, bitcast=True) + noise
    return (bits & 0xFFFF0000).to(tl.float32, bitcast=True).to(tl.bfloat16)


@triton.jit
def _adamw_kernel(
    W, M, V, ROWS, P, B, DR, E, COEF, BC, SEED, n_rows, n_batch, D, lr, wd, b1, b2, eps,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, FACTORED: tl.constexpr,
    STOCHASTIC: tl.constexpr,
):  # fmt: skip
    bc1, bc2_sqrt = tl.load(BC), tl.load(BC + 1)
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    g, w, at, mask = _grad_tile(W, ROWS, P, B, DR, E, r, d, n_rows, n_batch, D, BLOCK_R, BLOCK_D, BLOCK_K, FACTORED)
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
    """``train.optim.adamw_rows`` in one pass: each scored row's weight and moments read once, its gradient
    formed from the factors (or read, where ``g.p`` is given).

    ``seed``: a 1-element int64 tensor on the device, the stochastic rounding's (bf16 moments)."""
    bf16 = m.dtype == torch.bfloat16
    for t, dtype in ((w, torch.float32), (m, m.dtype), (v, m.dtype)):
        if not t.is_contiguous() or t.dtype != dtype or dtype not in (torch.float32, torch.bfloat16):
            raise ValueError("adamw_rows: centres (fp32) and moments (both fp32 or both bf16) must be contiguous")
    factored = g.p is None
    operands = (g.d, g.e) if factored else (g.p,)
    if not all(t.is_contiguous() for t in operands) or (factored and g.d.dtype != g.e.dtype):
        raise ValueError("adamw_rows: the gradient factors must be contiguous (d and e of one dtype)")
    n, d = g.rows.numel(), w.shape[1]
    n_batch = g.d.shape[0] if factored else 0
    t = step.to(device=w.device, dtype=torch.float64)  # the host's float64 formulas, rounded to fp32 at the end
    bc = torch.stack([1 - b1**t, (1 - b2**t).sqrt()]).float()
    block_r, block_d, block_k, warps = FACTORED_BLOCKS if factored else (BLOCK_R, BLOCK_D, 16, 4)
    grid = (-(-n // block_r), -(-d // block_d))
    p, dr, e = (w, g.d, g.e) if factored else (g.p, w, w)  # unused pointers: any tensor
    _adamw_kernel[grid](
        w, m, v, g.rows, p, g.b.float(), dr, e, coef.float().reshape(1), bc, seed, n, n_batch, d,
        lr, wd, b1, b2, eps,
        BLOCK_R=block_r, BLOCK_D=block_d, BLOCK_K=block_k, FACTORED=factored, STOCHASTIC=bf16, num_warps=warps,
    )  # fmt: skip
