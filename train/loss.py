"""Partial-FC cluster discrimination: CosFace softmax over sharded concept centres.

Each head (image bank, video bank, OCR vocabulary) owns a (num_classes, dim) centre matrix,
sharded by rows across all ranks as a DTensor (so checkpoints reshard to any world size).
Per step and head:

1. embeddings and label rows are gathered from every rank (variable per-rank batch sizes);
2. each sample keeps ``draw`` of its top-k labels (same draw on every rank);
3. every rank scores the global batch against a sample of its own centres: all positives of
   the drawn labels plus random negatives up to ``sample_rate`` of its rows (one sample shared
   by the drawn columns, so one GEMM per step instead of one per column);
4. negatives with cosine above ``filter`` are zeroed, the target cosine gets ``-margin``,
   everything is multiplied by ``scale``; the softmax is model-parallel: row maxima and
   sum-exps are all-reduced, each target logit comes from the rank that owns it.

The drawn columns differ only in which single entry is the target, so one (B, S) logit
matrix serves all of them: each column's sum-exp is the sum over non-target entries plus the
other columns' targets plus its own margin target (added, never subtracted: no cancellation).
Gradients: every rank computes the same loss value, so the all-reduces pass gradients
through unchanged; the embedding gather sums the per-shard gradients back to the owner and
multiplies by the world size, which DDP/FSDP gradient averaging then cancels.

Centre gradients: with ``sampled_update`` (the trainer's default, ``optim.head_update``) the
scored rows are a leaf of their own, so backward writes a (sampled rows, dim) gradient that
``train.optim.SampledRowAdamW`` applies to those rows only; the full-size gradient of a 2M-row
head is never made. Without it the centres are an ordinary parameter of the torch optimizer.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor, Shard

from train.config import HeadConfig
from train.scored_rows import RowGrad, ScoredRows, gemm_dtype


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_range(num_classes: int, rank: int, world: int) -> tuple[int, int]:
    """Rows owned by ``rank``: torch.chunk semantics, the layout of a Shard(0) DTensor."""
    size = -(-num_classes // world)
    lo = min(rank * size, num_classes)
    return lo, min(lo + size, num_classes)


INIT_BLOCK = 8192  # rows per seeded block of the random centre initialisation


def random_centres(num_classes: int, lo: int, hi: int, dim: int, seed: int) -> torch.Tensor:
    """Rows [lo, hi) of a random (num_classes, dim) centre matrix, N(0, 0.01^2).

    The matrix is drawn in blocks of ``INIT_BLOCK`` global rows, each from its own seeded generator,
    so it is the same however the rows are sharded: one rank and n ranks start from equal centres.
    """
    parts = [torch.zeros(0, dim)]
    for block in range(lo // INIT_BLOCK, -(-hi // INIT_BLOCK)):
        start = block * INIT_BLOCK
        gen = torch.Generator().manual_seed(seed * 1_000_003 + block)
        rows = torch.randn(min(INIT_BLOCK, num_classes - start), dim, generator=gen) * 0.01
        parts.append(rows[max(lo, start) - start : hi - start])
    return torch.cat(parts)


class _SumKeepGrad(torch.autograd.Function):
    """all_reduce(SUM) of a value whose reduced result every rank uses identically."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad


class _Gather(torch.autograd.Function):
    """All-gather rows of unequal count; backward sums the gradient and keeps the local rows x world."""

    @staticmethod
    def forward(ctx, x, counts: list[int]):
        rank, world = _world()
        ctx.rank, ctx.world, ctx.counts = rank, world, counts
        return _gather_nograd(x, counts, world)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        lo = sum(ctx.counts[: ctx.rank])
        return grad[lo : lo + ctx.counts[ctx.rank]] * ctx.world, None


def gather_rows(x: torch.Tensor, differentiable: bool = False, fill: float = 0) -> torch.Tensor:
    """Concatenate every rank's rows; ranks may differ in row count and (2D, not differentiable) width."""
    rank, world = _world()
    if world == 1:
        return x
    shape = torch.tensor([x.shape[0], x.shape[1] if x.ndim > 1 else 0], device=x.device)
    shapes = [torch.zeros_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    counts = [int(s[0]) for s in shapes]
    if differentiable:
        return _Gather.apply(x, counts)
    width = max(int(s[1]) for s in shapes)
    if x.ndim == 2 and x.shape[1] < width:  # e.g. label rows of different top-k widths
        x = torch.cat([x, x.new_full((x.shape[0], width - x.shape[1]), fill)], dim=1)
    with torch.no_grad():
        return _gather_nograd(x, counts, world)


def _gather_nograd(x, counts, world):
    buf = x.new_zeros((max(counts), *x.shape[1:]))
    buf[: x.shape[0]] = x.detach()
    out = [torch.empty_like(buf) for _ in range(world)]
    dist.all_gather(out, buf)
    return torch.cat([o[:c] for o, c in zip(out, counts, strict=True)])


def local_tensor(x: torch.Tensor) -> torch.Tensor:
    """This rank's part of a sharded (DTensor) tensor; a plain tensor as it is."""
    return x.to_local() if isinstance(x, DTensor) else x


def to_device(x: torch.Tensor, device) -> torch.Tensor:
    """A host tensor on ``device``; to CUDA by a pinned, asynchronous copy.

    A copy from pageable memory makes the host wait until the stream has run everything queued
    before it (the whole encoder forward), so the GPU then idles while the host queues the rest.
    """
    if torch.device(device).type != "cuda":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


def _sum(x: torch.Tensor) -> torch.Tensor:
    return _SumKeepGrad.apply(x) if _world()[1] > 1 else x


def draw_labels(labels: torch.Tensor, draw: int, gen: torch.Generator) -> torch.Tensor:
    """(B, k) labels (-1 = none) -> (B, min(k, draw)) randomly drawn valid labels (-1 where too few)."""
    score = torch.rand(labels.shape, generator=gen)
    score[labels < 0] = 2.0
    order = score.argsort(dim=1)[:, :draw]
    return labels.gather(1, order)


class PartialFC(nn.Module):
    """One concept head: sharded centres and the sampled, model-parallel CosFace softmax."""

    def __init__(
        self, cfg: HeadConfig, dim: int, seed: int = 0, device=None, sampled_update: bool = False, moments=torch.float32
    ):
        super().__init__()
        self.cfg = cfg
        self.sampled_update = sampled_update
        self.pending: list[RowGrad] = []  # the scored rows' gradient of each backward since the optimizer's step
        self.updated: torch.cuda.Event | None = None  # the side stream's row update not yet waited for
        self.updated_device = None
        rank, world = _world()
        self.lo, self.hi = shard_range(cfg.num_classes, rank, world)
        if cfg.bank:
            bank = np.load(cfg.bank, mmap_mode="r")
            if bank.ndim != 2 or bank.shape[0] != cfg.num_classes:
                raise ValueError(
                    f"head {cfg.name!r}: bank {cfg.bank} holds {bank.shape[0] if bank.ndim else '?'} classes, "
                    f"the head declares num_classes={cfg.num_classes}"
                )
            if bank.shape[1] != dim:
                raise ValueError(
                    f"head {cfg.name!r}: bank {cfg.bank} has dim {bank.shape[1]}, the encoder embeds {dim}"
                )
            local = torch.from_numpy(np.array(bank[self.lo : self.hi], dtype=np.float32))
        else:
            local = random_centres(cfg.num_classes, self.lo, self.hi, dim, seed)
        local = local.to(device)
        self.weight = nn.Parameter(self._sharded(local), requires_grad=not sampled_update)
        if sampled_update:
            # AdamW moments of the centres and the head's update count: buffers, so that checkpoints hold
            # and reshard them with the weights (the torch optimizer never sees this head)
            self.register_buffer("exp_avg", self._sharded(torch.zeros_like(local, dtype=moments)))
            self.register_buffer("exp_avg_sq", self._sharded(torch.zeros_like(local, dtype=moments)))
            self.register_buffer("updates", torch.zeros((), dtype=torch.int64))

    def _sharded(self, local: torch.Tensor) -> torch.Tensor:
        """This rank's rows as the Shard(0) DTensor of the whole matrix (a plain tensor without a group)."""
        _, world = _world()
        if world == 1 and not dist.is_initialized():
            return local
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(local.device.type, (world,))
        n, dim = self.cfg.num_classes, local.shape[1]
        return DTensor.from_local(local, mesh, [Shard(0)], shape=(n, dim), stride=(dim, 1))

    def local_weight(self) -> torch.Tensor:
        self.settle()
        return local_tensor(self.weight)

    def settle(self) -> None:
        """Make the current stream wait for a row update still running on the optimizer's side stream.

        ``SampledRowAdamW`` updates the scored rows on a stream of its own, so that the (bandwidth-bound)
        update overlaps the next step's (compute-bound) encoder work; whatever reads or writes the
        centres or their moments after it goes through here first.
        """
        if self.updated is not None:
            torch.cuda.current_stream(self.updated_device).wait_event(self.updated)
            self.updated = None

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        self.settle()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, *args, **kwargs):
        self.settle()
        super()._load_from_state_dict(*args, **kwargs)

    def take_row_grad(self) -> RowGrad:
        """The scored rows' gradient from every forward since the last call (sampled_update), factored if one.

        Micro-batches of one step score different rows; rows scored twice add up, as the dense gradient would.
        """
        pending, self.pending = self.pending, []
        w = self.local_weight()
        if len(pending) == 1:
            return pending[0]  # one forward: its rows are already sorted and distinct
        rows, inverse = torch.cat([g.rows for g in pending] + [w.new_zeros(0, dtype=torch.long)]).unique(
            return_inverse=True
        )
        grad = w.new_zeros(rows.numel(), w.shape[1])
        if pending:
            grad.index_add_(0, inverse, torch.cat([g.materialize(w) for g in pending]))
        return RowGrad(rows, grad, w.new_zeros(rows.numel()))

    def take_grad(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sorted local row ids, their summed fp32 gradient): ``take_row_grad`` written out."""
        grad = self.take_row_grad()
        return grad.rows, grad.materialize(self.local_weight())

    def forward(self, emb: torch.Tensor, labels: torch.Tensor, gen_draw, gen_neg) -> torch.Tensor:
        """emb (b, D) local rows, labels (b, k) global ids (-1 pad) -> global-batch mean loss.

        The label bookkeeping (draw, which targets are local, the positives to keep, the loss mask)
        runs on the CPU, where the labels are, instead of ``unique()`` and boolean indexing on the
        device; its results reach the device by pinned asynchronous copies, so the host never waits
        for the encoder's forward to finish before queueing the head and the backward.
        """
        cfg = self.cfg
        world = _world()[1]
        emb = gather_rows(emb, differentiable=True)
        labels = gather_rows(labels.to(emb.device), fill=-1).cpu() if world > 1 else labels.cpu()
        cols = draw_labels(labels, cfg.draw, gen_draw)  # (B, J), on the CPU
        valid = cols >= 0
        if not valid.any():  # no sample, or none with a label (OCR pages without words): no loss, not NaN
            return emb.sum() * 0.0 + self.local_weight().sum() * 0.0
        w = self.local_weight()
        n_local = w.shape[0]
        local = (cols >= self.lo) & (cols < self.hi)
        target = torch.where(local, cols - self.lo, -1)
        dev = w.device
        if cfg.sample_rate < 1.0 and n_local > 0:
            pos = to_device(target[local].unique(), dev)
            n_sample = max(int(cfg.sample_rate * n_local), pos.numel())
            score = torch.rand(n_local, generator=gen_neg, device=dev)
            score[pos] = 2.0
            index = score.topk(n_sample, sorted=False).indices.sort().values  # the set is what counts
            remap = torch.full((n_local,), -1, dtype=torch.long, device=dev)
            remap[index] = torch.arange(n_sample, device=dev)
            target = to_device(target, dev)
            target = torch.where(target >= 0, remap[target.clamp(min=0)], -1)
        else:
            target = to_device(target, dev)
            index = torch.arange(n_local, device=dev)
        valid = to_device(valid, dev)
        has = target >= 0
        t_idx = target.clamp(min=0)
        sink = self.pending if self.sampled_update and torch.is_grad_enabled() else None
        raw, inv_norm = ScoredRows.apply_to(F.normalize(emb.float(), dim=1), w, index, gemm_dtype(w.device), sink)
        scores, terms = _kernels(dev)
        base, t_margin, row_max = scores(raw, inv_norm, t_idx, has, cfg.filter, cfg.margin, cfg.scale)
        if world > 1:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX)
        total = _sum(terms(base, t_margin, row_max, target, t_idx, has))  # (B, J), identical on every rank
        t_logit = _sum(torch.where(has, t_margin, 0.0))
        loss = torch.where(valid, total.clamp_min(1e-30).log() + row_max[:, None] - t_logit, 0.0)
        return loss.sum() / valid.sum()


def _scores(raw, inv_norm, t_idx, has, filter: float, margin: float, scale: float):
    """(B, S) filtered, scaled logits; (B, J) margin target logits; (B,) row maxima of both (no gradient).

    Cosines as (emb / |emb|) . c * (1 / |c|) from ``ScoredRows``: the (S, D) normalised centres are
    never written; the GEMM may run in bf16 under autocast, everything after it is fp32.
    """
    cos = (raw.float() * inv_norm).clamp(-1, 1)  # (B, S)
    base = torch.where(cos > filter, torch.zeros_like(cos), cos) * scale
    t_margin = (cos.gather(1, t_idx) - margin) * scale  # (B, J)
    # stabiliser: the row max of every logit that can appear (all-reduced across ranks by the caller)
    row_max = torch.cat([base, torch.where(has, t_margin, -1e4)], 1).detach().amax(dim=1)
    return base, t_margin, row_max


def _terms(base, t_margin, row_max, target, t_idx, has):
    """(B, J) this rank's share of each drawn column's sum-exp.

    The sum over non-target entries, plus the other columns' targets, plus this column's margin
    target: no subtraction, so no cancellation when the target dominates the row.
    """
    e = (base - row_max[:, None]).exp()
    is_target = torch.zeros_like(base).scatter_add_(1, t_idx, has.float()) > 0
    rest = e.masked_fill(is_target, 0.0).sum(dim=1)  # (B,)
    e_t = torch.where(has, e.gather(1, t_idx), 0.0)
    same = target[:, :, None] == target[:, None, :]  # (B, J, J)
    first = has & ~(same & torch.ones_like(same).tril(-1)).any(dim=2)  # first occurrence of a target
    others = ((first[:, None, :] & ~same) * e_t[:, None, :]).sum(dim=2)
    own = torch.where(has, (t_margin - row_max[:, None]).exp(), 0.0)
    return rest[:, None] + others + own


@functools.cache
def _compiled():
    return torch.compile(_scores), torch.compile(_terms)


def _kernels(device) -> tuple:
    """``_scores`` and ``_terms``; on CUDA compiled, so that their ~30 elementwise passes over the (B, S)
    logits and the (S, D) rows, forward and backward, become a few fused kernels (RESULTS.md, Trainer).
    Elsewhere eager: the CPU tests run the same functions without a compiler."""
    return _compiled() if COMPILE_ON_CUDA and torch.device(device).type == "cuda" else (_scores, _terms)


COMPILE_ON_CUDA = True  # the GPU test compares the compiled head with the eager one


class ConceptHeads(nn.Module):
    """All heads of a run; each scores the samples of its modalities, losses weighted and summed."""

    def __init__(
        self, heads: tuple[HeadConfig, ...], dim: int, seed=0, device=None, sampled_update=False, moments=torch.float32
    ):
        super().__init__()
        self.cfgs = {h.name: h for h in heads}
        self.sampled_update = sampled_update
        self.heads = nn.ModuleDict({h.name: PartialFC(h, dim, seed, device, sampled_update, moments) for h in heads})
        self.route = {m: h.name for h in heads for m in h.modalities}

    def forward(self, emb, modality: list[str], labels: torch.Tensor, seed: int, step: int, micro: int = 0):
        unknown = sorted(set(modality) - set(self.route))
        if unknown:
            raise ValueError(f"samples of modality {unknown} but no head takes them (heads: {dict(self.route)})")
        rank, _ = _world()
        total, parts = 0.0, {}
        for i, (name, head) in enumerate(self.heads.items()):
            rows = [j for j, m in enumerate(modality) if self.route[m] == name]
            key = ((seed * 1_000_003 + step) * 131 + micro) * 17 + i
            gen_draw = torch.Generator().manual_seed(key)
            gen_neg = torch.Generator(device=emb.device).manual_seed(key * 4099 + rank)
            if len(rows) == len(modality):  # the whole batch (one head, or one modality in it)
                mine, my_labels = emb, labels
            else:
                idx = torch.tensor(rows, dtype=torch.long)
                mine, my_labels = emb.index_select(0, to_device(idx, emb.device)), labels.index_select(0, idx)
            loss = head(mine, my_labels, gen_draw, gen_neg)
            parts[name] = loss.detach()
            total = total + self.cfgs[name].weight * loss
        return total, parts
