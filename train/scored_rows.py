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
  ``d^T e + b[:, None] * w[rows]`` (``d`` the (B, S) gradient of the raw products, ``e`` the (B, D)
  embeddings, ``b = -s^3 d_s`` from the norm). Neither ``p = d^T e`` (S, D) nor the fp32 row gradient is
  written: the AdamW kernel forms ``p`` tile by tile in its pass over the rows, and the clip's norm
  comes from (B, B) Gram matrices and the raw products (``RowGrad.square_norm``), reading no row.

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

    ``p`` (S, D) is given, or ``None`` and factored as ``d^T e`` (one backward's ``d`` (B, S) and ``e`` (B, D)
    in the GEMM's dtype; ``raw`` (B, S) = ``e . w[rows]`` and ``s`` the inverse norms, for the norm).
    """

    rows: torch.Tensor
    p: torch.Tensor | None  # (S, D), or None: factored
    b: torch.Tensor  # (S,) fp32
    d: torch.Tensor | None = None
    e: torch.Tensor | None = None
    raw: torch.Tensor | None = None
    s: torch.Tensor | None = None

    def product(self) -> torch.Tensor:
        """``p`` in fp32 (formed from the factors if need be)."""
        if self.p is not None:
            return self.p.float()
        with torch.autocast(self.d.device.type, enabled=False):
            return self.d.T.float() @ self.e.float()

    def materialize(self, w: torch.Tensor) -> torch.Tensor:
        return self.product() + self.b[:, None] * w[self.rows]

    def square_norm(self, w: torch.Tensor) -> torch.Tensor:
        """Squared norm of the whole gradient (a 0-d fp32 tensor); from the factors without touching a row.

        Factored, ``sum_i |p_i + b_i w_i|^2 = <e e^T, d d^T> + 2 sum_i b_i (d_i . raw_i) + sum_i b_i^2 / s_i^2``:
        two (B, B) Gram matrices (fp32 products of the GEMM's operands) and one pass over the (B, S) ``d`` and
        ``raw``, instead of a pass over (S, D) rows. ``raw`` holds the products as the GEMM rounded them, as
        the norm's inputs were before (bf16 rows under autocast): the clip needs no more.
        """
        if self.p is not None:
            return self.materialize(w).square().sum()
        with torch.autocast(self.d.device.type, enabled=False):
            d, e = self.d.float(), self.e.float()
            products = ((e @ e.T) * (d @ d.T)).sum()
            cross = (d * self.raw.float()).sum(dim=0)
        radial = torch.where(self.b != 0, self.b.square() / self.s.square(), 0.0)
        return products + 2 * (self.b * cross).sum() + radial.sum()


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
        ctx.save_for_backward(e_c, rows, s, w if sink is None else None, index, raw if sink is not None else None)
        ctx.sink, ctx.e_dtype = sink, e.dtype
        return raw, s

    @staticmethod
    def backward(ctx, d_raw, d_s):
        e_c, rows, s, w, index, raw = ctx.saved_tensors
        with torch.autocast(e_c.device.type, enabled=False):
            d_raw = d_raw.to(rows.dtype).contiguous()
            d_e = (d_raw @ rows).to(ctx.e_dtype) if ctx.needs_input_grad[0] else None
        # d s / d w = -s^3 w, except where the norm was clamped (s constant there)
        b = torch.where(s < 1 / NORM_EPS, -(s**3) * d_s.float(), 0.0) if d_s is not None else torch.zeros_like(s)
        if ctx.sink is not None:
            ctx.sink.append(RowGrad(index, None, b, d_raw, e_c.detach(), raw.detach(), s))
            return d_e, None, None, None, None, None
        grad = RowGrad(index, None, b, d_raw, e_c)
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
