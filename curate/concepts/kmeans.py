"""Lloyd's k-means and exact top-k assignment in torch, chunked so two million centroids fit on one GPU.

Nearest centroid is a GEMM: argmin ||x - c||^2 = argmax (x.c - ||c||^2 / 2). Points get a constant
1 column and centroids a -||c||^2/2 column, so one bf16 (or tf32) GEMM with fp32 accumulation gives
the scores of a (points x centroids) tile and one max over it gives the nearest centroid: ~2*N*K*D
FLOPs per iteration and nothing of size N*K is ever held. Tiles are chunked over N and K; only the
centroids (and their fp32 sums) stay resident. The objective is recomputed exactly in fp32 from the
chosen centroids, so it is comparable across precisions and with faiss. faiss (CPU) is imported only
inside :func:`faiss_kmeans`: this module needs nothing but torch and numpy.

Across GPUs (``group=``, a torch.distributed process group): each rank holds a slice of the points
and assigns it locally; per-centroid sums, counts and the objective are all-reduced, and the
initialisation is drawn on the global index space, so n ranks compute the single-process run up to
the order of float summation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import numpy as np
import torch
import torch.distributed as dist

from curate.concepts import fused as fused_assign

PAD = 8  # bias column padded to 8 so rows stay 16-byte aligned for tensor cores
SPLIT_EPS = 1.0 / 1024  # faiss's perturbation when an empty cluster takes half of a big one
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "tf32": torch.float32}


@dataclasses.dataclass
class KMeansResult:
    centroids: np.ndarray  # (K, D) float32
    objective: list[float]  # sum of squared L2 distances at each iteration's assignment (faiss's convention)
    counts: np.ndarray  # points per centroid at the last assignment
    seconds: list[float]  # wall time per iteration
    backend: str
    precision: str


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device = 'cuda' but torch sees no CUDA device here")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


@contextlib.contextmanager
def _matmul_precision(precision: str):
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def _chunks(device: torch.device, n: int, k: int, chunk_n: int | None, chunk_k: int | None) -> tuple[int, int]:
    """Tile sizes: a 2**31-element (4 GiB bf16) score tile on GPU, 2**22 on CPU."""
    tile = 2**31 if device.type == "cuda" else 2**22
    cn = chunk_n or (16384 if device.type == "cuda" else 2048)
    ck = chunk_k or max(1024, tile // cn)
    return max(1, min(cn, n)), max(1, min(ck, k))


def augment_centroids(c: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(K, D) fp32 -> (K, D + PAD) in ``dtype``: [c, -||c||^2/2, 0...]."""
    out = torch.zeros(c.shape[0], c.shape[1] + PAD, dtype=dtype, device=c.device)
    out[:, : c.shape[1]] = c
    out[:, c.shape[1]] = -0.5 * (c * c).sum(1)
    return out


def _augment_points(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    out = torch.zeros(x.shape[0], x.shape[1] + PAD, dtype=dtype, device=x.device)
    out[:, : x.shape[1]] = x
    out[:, x.shape[1]] = 1
    return out


def _topk_tiles(xa: torch.Tensor, ca: torch.Tensor, k: int, chunk_k: int) -> torch.Tensor:
    """Indices (n, k) of the k highest scores of augmented points ``xa`` against ``ca``, K-chunked."""
    best_v = best_i = None
    for k0 in range(0, ca.shape[0], chunk_k):
        s = xa @ ca[k0 : k0 + chunk_k].T
        if k == 1:
            v, i = s.max(1, keepdim=True)
        else:
            v, i = s.topk(min(k, s.shape[1]), dim=1)
        i = i + k0
        if best_v is None:
            best_v, best_i = v, i
        elif k == 1:
            better = v > best_v  # strict: ties keep the lower index, like a full argmax
            best_v, best_i = torch.where(better, v, best_v), torch.where(better, i, best_i)
        else:
            v, j = torch.cat([best_v, v], 1).topk(min(k, best_v.shape[1] + v.shape[1]), dim=1)
            best_v, best_i = v, torch.cat([best_i, i], 1).gather(1, j)
    return best_i


def _as_tensor(x) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x


class Assigner:
    """Centroids resident on one device, ready to give points their k nearest (the assign stage holds one)."""

    def __init__(self, centroids, *, precision="auto", device="auto", chunk_n=None, chunk_k=None, fused=None):
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        c = _as_tensor(centroids).to(self.device, torch.float32)
        self.k, self.dim = c.shape
        self.fused = _use_fused(fused, self.device, self.precision)
        if self.fused:  # top-1 only; top-k (k > 1) falls back to the tiles
            self.cb, self.bias = c.to(_DTYPES[self.precision]), -0.5 * (c * c).sum(1)
        self.ca = augment_centroids(c, _DTYPES[self.precision])
        self.chunk_n, self.chunk_k = chunk_n, chunk_k

    def __call__(self, x, k: int = 1) -> np.ndarray:
        """Indices (N, k) int64 of each point's k nearest centroids (L2), nearest first."""
        x = _as_tensor(x)
        if x.shape[1] != self.dim:
            raise ValueError(f"points have {x.shape[1]} dims but the centroids {self.dim}")
        if k > self.k:
            raise ValueError(f"top_k={k} exceeds the {self.k} centroids")
        cn, ck = _chunks(self.device, x.shape[0], self.k, self.chunk_n, self.chunk_k)
        dtype, out = _DTYPES[self.precision], []
        with torch.no_grad(), _matmul_precision(self.precision):
            for n0 in range(0, x.shape[0], cn):
                xf = x[n0 : n0 + cn].to(self.device, torch.float32)
                if self.fused and k == 1:
                    out.append(fused_assign.nearest1(xf.to(dtype), self.cb, self.bias)[:, None].cpu())
                else:
                    out.append(_topk_tiles(_augment_points(xf, dtype), self.ca, k, ck).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, k), np.int64)


def nearest(x, centroids, k: int = 1, **kwargs) -> np.ndarray:
    """Indices (N, k) int64 of each point's k nearest centroids (L2), nearest first."""
    return Assigner(centroids, **kwargs)(x, k)


class _Rows:
    """Rows by global index: this process's points, or this rank's slice of a process group's points.

    With a group, the global row order is rank order (rank 0's rows first); a row is fetched from
    the rank that holds it (the others add zeros) and per-row vectors are gathered, so whatever is
    drawn on the global index space is the same on every rank and equal to the single-process draw.
    """

    def __init__(self, x: torch.Tensor, dev: torch.device, group=None):
        self.x, self.dev, self.group = x, dev, group
        self.counts, rank = [x.shape[0]], 0
        if group is not None:
            mine = torch.tensor([x.shape[0]], dtype=torch.int64, device=dev)
            every = [torch.zeros_like(mine) for _ in range(dist.get_world_size(group))]
            dist.all_gather(every, mine, group=group)
            self.counts, rank = [int(t) for t in every], dist.get_rank(group)
        self.lo, self.n = sum(self.counts[:rank]), sum(self.counts)

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` (int64, global) as fp32 on the device."""
        if self.group is None:
            return self.x[idx].to(self.dev, torch.float32)
        mine = (idx >= self.lo) & (idx < self.lo + self.x.shape[0])
        out = torch.zeros(idx.shape[0], self.x.shape[1], dtype=torch.float32, device=self.dev)
        out[mine.to(self.dev)] = self.x[idx[mine] - self.lo].to(self.dev, torch.float32)
        return self.sum(out)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) in place across the group; the identity for one process."""
        if self.group is not None:
            dist.all_reduce(t, group=self.group)
        return t

    def cat(self, v: torch.Tensor) -> torch.Tensor:
        """This rank's per-row vector -> the global one, in global row order."""
        if self.group is None:
            return v
        buf = v.new_zeros(max(self.counts))
        buf[: v.shape[0]] = v
        every = [torch.empty_like(buf) for _ in self.counts]
        dist.all_gather(every, buf, group=self.group)
        return torch.cat([b[:c] for b, c in zip(every, self.counts, strict=True)])


def _sq_dist(x: torch.Tensor, c: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """Squared distances (N,) of ``x`` to one centroid, in 65536-row blocks; (0,) for a rank with no points."""
    parts = [((x[i : i + 65536].to(dev, torch.float32) - c) ** 2).sum(1) for i in range(0, x.shape[0], 65536)]
    return torch.cat(parts) if parts else torch.zeros(0, device=dev)


def _init(x: torch.Tensor, k: int, init: str, gen: torch.Generator, dev: torch.device, rows=None) -> torch.Tensor:
    rows = rows or _Rows(x, dev)
    n = rows.n
    if init == "random":
        idx = torch.randperm(n, generator=gen)[:k].sort().values
        return rows.take(idx)
    # k-means++: k sequential passes over the points, so meant for small k
    first = int(torch.randint(n, (1,), generator=gen))
    cents = [rows.take(torch.tensor([first]))[0]]
    d2 = rows.cat(_sq_dist(x, cents[0], dev))
    for _ in range(1, k):
        probs = (d2 / d2.sum()).cpu() if float(d2.sum()) > 0 else torch.full((n,), 1.0 / n)
        j = int(torch.multinomial(probs, 1, generator=gen))
        c = rows.take(torch.tensor([j]))[0]
        cents.append(c)
        d2 = torch.minimum(d2, rows.cat(_sq_dist(x, c, dev)))
    return torch.stack(cents)


def kmeans(
    x,
    k: int,
    *,
    iters: int = 20,
    seed: int = 0,
    init: str = "random",
    spherical: bool = False,
    precision: str = "auto",
    device: str = "auto",
    init_centroids=None,
    chunk_n: int | None = None,
    chunk_k: int | None = None,
    fused: bool | None = None,
    progress=None,
    group=None,
) -> KMeansResult:
    """Lloyd's k-means of ``x`` (N, D) float16/float32 into ``k`` centroids.

    Each iteration assigns every point to its nearest centroid (chunked GEMM in ``precision``, fp32
    accumulation), records the objective, then moves each centroid to its points' fp32 mean. An
    empty centroid takes over half of a populous one (chosen with probability ~ its size - 1, as
    faiss does) by copying and perturbing it. ``x`` stays on the host unless it fits easily on the GPU.
    ``fused`` (default: when Triton and a GPU are there and precision is bf16/fp16) assigns with the
    Triton kernel of :mod:`curate.concepts.fused` instead of materialising score tiles.

    ``group`` (a torch.distributed process group, e.g. ``torch.distributed.group.WORLD``; None: this
    process alone): ``x`` is this rank's slice of the points, the global order being rank order, and
    every rank of the group calls with the same arguments. The collectives run on ``device`` (nccl for
    cuda, gloo for cpu). The initial centroids are drawn from the global index space (so they equal
    the single-process ones on the concatenated points; ``init_centroids`` is taken from the group's
    first rank), assignment is local, and per-centroid sums, counts and the objective are all-reduced:
    every rank returns the same centroids, global counts and global objective.
    """
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    x = _as_tensor(x)
    d = x.shape[1]
    for i in range(0, x.shape[0], 1 << 20):  # in blocks: no N x D mask at tens of millions of points
        if not bool(torch.isfinite(x[i : i + (1 << 20)]).all()):
            raise ValueError(
                f"k-means points hold NaN or inf values (in rows {i} to {i + (1 << 20) - 1}); drop them first"
            )
    rows = _Rows(x, dev, group)
    n = rows.n
    if n < k:
        raise ValueError(f"k={k} centroids need at least k points, got {n}")
    if dev.type == "cuda" and x.element_size() * x.numel() < 0.25 * torch.cuda.mem_get_info(dev)[0]:
        x = x.to(dev)
    gen = torch.Generator().manual_seed(seed)
    split_gen = torch.Generator(device=dev).manual_seed(seed + 1)
    if init_centroids is not None:
        c = _as_tensor(init_centroids).to(dev, torch.float32).clone()
        if group is not None:
            dist.broadcast(c, group=group, group_src=0)
    else:
        c = _init(x, k, init, gen, dev, rows)
    if spherical:
        c = torch.nn.functional.normalize(c, dim=1)
    cn, ck = _chunks(dev, x.shape[0], k, chunk_n, chunk_k)
    fused = _use_fused(fused, dev, prec)
    if fused and chunk_n is None:
        cn = max(1, min(x.shape[0], 65536))  # no score tiles to hold: bigger point blocks fill the GPU in one launch
    objective, seconds = [], []
    counts = torch.zeros(k, dtype=torch.int64, device=dev)
    # fp64 sums on the CPU (small k there): the centroids then do not depend on the order in which
    # chunks and ranks add up, so a process group reaches the single process's centroids bit for bit.
    # On GPU fp32 (a 2M x 512 fp64 buffer would double the update's memory).
    sum_dtype = torch.float64 if dev.type == "cpu" else torch.float32
    with torch.no_grad(), _matmul_precision(prec):
        for it in range(iters):
            start = time.perf_counter()
            if fused:
                cb, bias = c.to(_DTYPES[prec]), -0.5 * (c * c).sum(1)
            else:
                ca = augment_centroids(c, _DTYPES[prec])
            sums = torch.zeros(k, d, dtype=sum_dtype, device=dev)
            counts = torch.zeros(k, dtype=torch.int64, device=dev)
            obj = torch.zeros((), dtype=torch.float64, device=dev)
            for n0 in range(0, x.shape[0], cn):
                xf = x[n0 : n0 + cn].to(dev, torch.float32, non_blocking=True)
                if fused:
                    idx = fused_assign.nearest1(xf.to(_DTYPES[prec]), cb, bias)
                else:
                    idx = _topk_tiles(_augment_points(xf, _DTYPES[prec]), ca, 1, ck)[:, 0]
                obj += ((xf - c[idx]) ** 2).sum(dtype=torch.float64)
                sums.index_add_(0, idx, xf.to(sum_dtype))
                counts += torch.bincount(idx, minlength=k)
            ca = cb = None
            if group is not None:  # every rank then holds the same sums, so takes the same update and split
                for t in (sums, counts, obj):
                    dist.all_reduce(t, group=group)
            c = _update(c, sums, counts, spherical, split_gen)
            objective.append(float(obj))
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            seconds.append(time.perf_counter() - start)
            if progress:
                progress(it, objective[-1], seconds[-1])
    return KMeansResult(
        c.cpu().numpy(), objective, counts.cpu().numpy(), seconds, "torch", prec + ("+fused" if fused else "")
    )


def _use_fused(fused: bool | None, dev: torch.device, prec: str) -> bool:
    ok = prec in ("bf16", "fp16") and fused_assign.available(dev)
    if fused and not ok:
        raise RuntimeError("fused assignment needs a CUDA device, Triton, and precision bf16 or fp16")
    return ok if fused is None else fused


def _update(c, sums, counts, spherical: bool, gen: torch.Generator) -> torch.Tensor:
    filled = counts > 0
    new = torch.where(filled[:, None], sums / counts.clamp(min=1)[:, None].to(sums.dtype), c)
    empty = torch.nonzero(~filled).flatten()
    weights = (counts - 1).clamp(min=0).to(torch.float32)
    if len(empty) and float(weights.sum()) > 0:
        donors = torch.multinomial(weights, len(empty), replacement=True, generator=gen)
        sign = torch.randint(0, 2, (len(empty), c.shape[1]), generator=gen, device=c.device).to(c.dtype) * 2 - 1
        base = new[donors]
        new[empty] = base * (1 + SPLIT_EPS * sign)
        new[donors] = base * (1 - SPLIT_EPS * sign)
    new = new.to(c.dtype)
    return torch.nn.functional.normalize(new, dim=1) if spherical else new


def faiss_kmeans(x, k: int, *, iters: int = 20, seed: int = 0, spherical: bool = False, init_centroids=None):
    """faiss-cpu ``Clustering`` on every point given (no subsampling), for small k."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    d = x.shape[1]
    clus = faiss.Clustering(d, k)
    clus.niter, clus.seed, clus.spherical, clus.verbose = iters, seed, spherical, False
    clus.max_points_per_centroid = max(1, -(-x.shape[0] // k))  # we subsample ourselves
    clus.min_points_per_centroid = 1
    if init_centroids is not None:
        faiss.copy_array_to_vector(np.ascontiguousarray(init_centroids, np.float32).ravel(), clus.centroids)
    index = faiss.IndexFlatL2(d)
    start = time.perf_counter()
    clus.train(x, index)
    elapsed = time.perf_counter() - start
    centroids = faiss.vector_to_array(clus.centroids).reshape(k, d)
    stats = clus.iteration_stats
    objective = [stats.at(i).obj for i in range(stats.size())]
    _, assign = index.search(x, 1)
    counts = np.bincount(assign[:, 0], minlength=k)
    return KMeansResult(centroids, objective, counts, [elapsed / max(1, iters)] * iters, "faiss", "fp32")


def fit(x, cfg, init_centroids=None, progress=None, group=None) -> KMeansResult:
    """Run ``cfg`` (a :class:`~curate.concepts.config.KMeansConfig`) on ``x`` with the backend it picks.

    ``group``: ``x`` is this rank's slice of the points of a process group (see :func:`kmeans`); torch only.
    """
    backend = cfg.backend
    if backend == "auto":
        torch_wins = group is not None or resolve_device(cfg.device).type == "cuda" or cfg.k > cfg.faiss_max_k
        backend = "torch" if torch_wins else "faiss"
    if backend == "faiss" and group is not None:
        raise ValueError("backend = 'faiss' runs in one process; k-means over a process group needs 'torch'")
    if backend == "faiss":
        if init_centroids is None and cfg.init == "kmeans++":
            gen = torch.Generator().manual_seed(cfg.seed)
            init_centroids = _init(_as_tensor(x).float(), cfg.k, "kmeans++", gen, torch.device("cpu")).numpy()
        return faiss_kmeans(
            x, cfg.k, iters=cfg.iters, seed=cfg.seed, spherical=cfg.spherical, init_centroids=init_centroids
        )
    return kmeans(
        x,
        cfg.k,
        iters=cfg.iters,
        seed=cfg.seed,
        init=cfg.init,
        spherical=cfg.spherical,
        precision=cfg.precision,
        device=cfg.device,
        init_centroids=init_centroids,
        progress=progress,
        group=group,
    )


def sample_rows(n: int, k: int, max_points_per_centroid: int, seed: int) -> np.ndarray | None:
    """Sorted indices of a seeded sample of at most k * max_points_per_centroid rows (None = all)."""
    cap = k * max_points_per_centroid
    if not max_points_per_centroid or n <= cap:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))
