"""The centre rows a partial-FC step scores: one read of each row forward, a factored gradient backward.

Scoring S of a head's rows against the batch needs, per row, the row cast for the GEMM and its inverse
norm. Eager torch (or autograd through ``w[index]`` and ``w.norm``) reads and writes the (S, D) fp32
rows several times: a gather, a norm, a cast, and backward a norm gradient and a full (S, D) fp32
gradient that the optimizer reads again to clip and again to update. At 2M classes that traffic was
most of the head's time (RESULTS.md, Trainer). Here:

- forward, one pass (a Triton kernel on CUDA) gathers the rows, writes them in the GEMM's dtype and
  writes ``s = 1 / max(|w|, 1e-12)``; the raw products ``e . w`` and ``s`` are the outputs, so the
  caller's fused logit math applies the norm;
- backward returns the embedding's gradient and, for the rows, ``RowGrad``: the gradient factored as
  ``p + b[:, None] * w[rows]`` (``p = d_raw^T e`` from the GEMM, ``b = -s^3 d_s`` from the norm), which
  the sampled-row AdamW consumes without ever writing the fp32 row gradient (``train.optim``).

With the centres as an ordinary parameter (the dense update) the same function returns their
full-size gradient instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NORM_EPS = 1e-12  # F.normalize's


@dataclass
class RowGrad:
    """Gradient of centre rows ``rows`` (sorted, distinct): ``p + b[:, None] * w[rows]``, ``w`` as scored.

    ``scored``: the rows as the forward's GEMM read them (``w[rows]`` in the GEMM's dtype), kept so the
    clip's norm reads this contiguous copy, half the bytes of fp32 rows gathered again; ``p`` itself
    is rounded to that dtype, so the norm loses nothing it had. The update reads the fp32 rows.
    """

    rows: torch.Tensor
    p: torch.Tensor  # (S, D), the GEMM's dtype
    b: torch.Tensor  # (S,) fp32
    scored: torch.Tensor | None = None  # (S, D), the GEMM's dtype

    def materialize(self, w: torch.Tensor) -> torch.Tensor:
        return self.p.float() + self.b[:, None] * w[self.rows]

    def for_norm(self, w: torch.Tensor) -> torch.Tensor:
        """``materialize`` from the GEMM's copy of the rows where there is one."""
        return self.p.float() + self.b[:, None] * (w[self.rows] if self.scored is None else self.scored.float())


def gemm_dtype(device: torch.device) -> torch.dtype:
    """What autocast would run a matmul in here; fp32 without autocast."""
    kind = device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else torch.float32


class ScoredRows(torch.autograd.Function):
    """(e (B, D), w (N, D), index (S,)) -> raw (B, S) = e . w[index] in the GEMM's dtype, s (S,) fp32.

    ``sink``: a list; with it the rows' gradient goes there as a ``RowGrad`` (``w`` needs no gradient),
    without it ``w`` gets its full-size gradient. ``anchor``: an empty tensor that requires grad, so the
    rows' gradient is computed even when neither ``e`` nor ``w`` requires one (the head alone).
    """

    @staticmethod
    def apply_to(e, w, index, dtype, sink):
        anchor = torch.empty(0, device=e.device, requires_grad=sink is not None)
        return ScoredRows.apply(e, w, index, dtype, sink, anchor)

    @staticmethod
    def forward(ctx, e, w, index, dtype, sink, anchor):
        rows, s = rows_for_gemm(w, index, dtype)
        with torch.autocast(e.device.type, enabled=False):
            e_c = e.to(dtype)
            raw = e_c @ rows.T
        ctx.save_for_backward(e_c, rows, s, w if sink is None else None, index)
        ctx.sink, ctx.e_dtype = sink, e.dtype
        return raw, s

    @staticmethod
    def backward(ctx, d_raw, d_s):
        e_c, rows, s, w, index = ctx.saved_tensors
        with torch.autocast(e_c.device.type, enabled=False):
            d_raw = d_raw.to(rows.dtype)
            d_e = (d_raw @ rows).to(ctx.e_dtype) if ctx.needs_input_grad[0] else None
            p = d_raw.T @ e_c
        # d s / d w = -s^3 w, except where the norm was clamped (s constant there)
        b = torch.where(s < 1 / NORM_EPS, -(s**3) * d_s.float(), 0.0) if d_s is not None else torch.zeros_like(s)
        grad = RowGrad(index, p, b, rows)
        if ctx.sink is not None:
            ctx.sink.append(grad)
            return d_e, None, None, None, None, None
        d_w = torch.zeros_like(w).index_add_(0, index, grad.materialize(w))
        return d_e, d_w, None, None, None, None


def rows_for_gemm(w: torch.Tensor, index: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``w[index]`` in ``dtype`` and the rows' inverse norms (fp32, from the fp32 rows), one pass on CUDA."""
    if w.is_cuda and w.dtype == torch.float32 and w.is_contiguous():
        from train.row_kernels import gather_rows_cuda

        return gather_rows_cuda(w.detach(), index, dtype)
    rows = w.detach()[index]
    s = rows.float().norm(dim=1).clamp_min(NORM_EPS).reciprocal()
    return rows.to(dtype), s
