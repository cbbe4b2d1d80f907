"""k-means benchmark: GPU iteration time against the bf16 GEMM roofline, CPU time against faiss-cpu.

    python tests/benchmarks/bench_kmeans.py gpu [--n 1000000 --d 512 --ks 1000000 2000000]   # torch only
    python tests/benchmarks/bench_kmeans.py cpu [--n 100000 --d 512 --k 1024 --iters 3]     # needs faiss

One Lloyd iteration costs 2*N*K*D FLOPs of assignment GEMM (performance-anchors.md section 2). The
GPU part measures a bf16 GEMM of the exact tile shape our assignment uses, in the same run, and
reports achieved TFLOP/s (2*N*K*D / iteration time) over it; it also times assignment alone, peak
GPU memory, and what bf16 scores cost in quality (objective and top-1 agreement against fp32).
The CPU part runs our torch k-means and faiss-cpu from the same init and reports ours / faiss.
Prints one JSON line per measurement and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from curate.concepts.kmeans import PAD, Assigner, _chunks, kmeans  # noqa: E402


def _emit(row: dict) -> dict:
    print(json.dumps(row), flush=True)
    return row


def _gemm_tflops(m: int, n: int, k: int, dtype: torch.dtype, reps: int = 20) -> float:
    """(m x k) @ (k x n) in ``dtype`` (tf32 for float32 here), timed with CUDA events after warm-up."""
    a = torch.randn(m, k, device="cuda").to(dtype)
    b = torch.randn(n, k, device="cuda").to(dtype)
    torch.set_float32_matmul_precision("high")
    for _ in range(3):
        a @ b.T
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b.T
    end.record()
    torch.cuda.synchronize()
    torch.set_float32_matmul_precision("highest")
    return 2 * m * n * k * reps / (start.elapsed_time(end) / 1e3) / 1e12


def _data(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Unit vectors around 20,000 fixed random centres (CLIP-like: normalised, clustered), fp32 on the GPU.

    The centres are the same for every ``seed``; ``seed`` draws the points, so seed 1 gives held-out points.
    """
    g = torch.Generator(device="cuda").manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(20000, d, device="cuda", generator=g), dim=1)
    g.manual_seed(1000 + seed)
    pick = torch.randint(0, 20000, (n,), device="cuda", generator=g)
    x = torch.empty(n, d, device="cuda")
    for i in range(0, n, 1 << 20):  # in blocks: no temporaries of the whole size at tens of millions of points
        block = centres[pick[i : i + (1 << 20)]] + 0.05 * torch.randn(
            min(n - i, 1 << 20), d, device="cuda", generator=g
        )
        x[i : i + (1 << 20)] = torch.nn.functional.normalize(block, dim=1)
    return x


def _sweep(x: torch.Tensor, k: int, name: str) -> dict:
    """Time the fused kernel's tile configs on one 65,536-point block against k centroids; keep the best."""
    from curate.concepts import fused

    c = torch.nn.functional.normalize(torch.randn(k, x.shape[1], device="cuda"), dim=1)
    cb, bias, xb = c.bfloat16(), -0.5 * (c * c).sum(1), x[:65536].bfloat16()
    configs = [
        {"block_n": 128, "block_k": 128, "block_d": 64, "num_warps": 8, "num_stages": 3},
        {"block_n": 128, "block_k": 256, "block_d": 64, "num_warps": 8, "num_stages": 3},
        {"block_n": 256, "block_k": 128, "block_d": 64, "num_warps": 8, "num_stages": 3},
        {"block_n": 128, "block_k": 128, "block_d": 64, "num_warps": 4, "num_stages": 4},
        {"block_n": 128, "block_k": 256, "block_d": 32, "num_warps": 8, "num_stages": 4},
        {"block_n": 256, "block_k": 128, "block_d": 32, "num_warps": 8, "num_stages": 4},
        {"block_n": 128, "block_k": 256, "block_d": 64, "num_warps": 8, "num_stages": 4},
        {"block_n": 128, "block_k": 256, "block_d": 32, "num_warps": 8, "num_stages": 5},
        {"block_n": 256, "block_k": 128, "block_d": 32, "num_warps": 8, "num_stages": 5},
        {"block_n": 128, "block_k": 128, "block_d": 32, "num_warps": 4, "num_stages": 5},
        {"block_n": 256, "block_k": 128, "block_d": 64, "num_warps": 8, "num_stages": 4},
        {"block_n": 256, "block_k": 128, "block_d": 32, "num_warps": 8, "num_stages": 3},
        {"block_n": 256, "block_k": 64, "block_d": 64, "num_warps": 8, "num_stages": 4},
    ]
    results = []
    for cfg in configs:
        try:
            fused.nearest1(xb, cb, bias, **cfg)
            torch.cuda.synchronize()
            start = time.perf_counter()
            fused.nearest1(xb, cb, bias, **cfg)
            torch.cuda.synchronize()
            t = time.perf_counter() - start
            results.append({**cfg, "s": round(t, 4), "tflops": round(2 * 65536 * k * x.shape[1] / t / 1e12, 1)})
        except Exception as exc:  # noqa: BLE001 - a config the compiler refuses is reported, not fatal
            results.append({**cfg, "error": str(exc)[:200]})
    best = max((r for r in results if "tflops" in r), key=lambda r: r["tflops"])
    fused.CONFIG.update({key: best[key] for key in fused.CONFIG})
    return _emit({"what": "fused_sweep", "device": name, "k": k, "configs": results, "chosen": fused.CONFIG})


def gpu(args) -> list[dict]:
    from curate.concepts import fused

    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    rows = []
    x = _data(max([args.n, *args.ks]), args.d)  # k-means needs N >= K: K=2M runs on N=2M points
    cn, ck = _chunks(dev, args.n, max(args.ks), None, None)
    roof = {p: _gemm_tflops(cn, ck, args.d + PAD, dt) for p, dt in (("bf16", torch.bfloat16), ("tf32", torch.float32))}
    roof["bf16_unpadded_65536"] = _gemm_tflops(65536, 131072, args.d, torch.bfloat16, reps=5)
    best = max(roof["bf16"], roof["bf16_unpadded_65536"])  # ratios are against the faster of the two GEMMs
    rows.append(_emit({"what": "gemm", "device": name, "shape": [cn, ck, args.d + PAD], "tflops": roof}))
    has_fused = fused.available(dev)
    if has_fused:
        rows.append(_sweep(x, args.ks[0], name))
    every = [("bf16", True)] * has_fused + [("bf16", False), ("tf32", False)]
    named = {("bf16", True): "fused", ("bf16", False): "bf16", ("tf32", False): "tf32"}
    modes = [m for m in every if named[m] in args.modes]
    if not args.no_checks:
        k = args.objective_k  # a K < N where the objective means something (at K = N it is 0)
        objective = {}
        for prec, use_fused in every:
            res = kmeans(x[: args.n], k, iters=args.iters, seed=0, precision=prec, device="cuda", fused=use_fused)
            objective[res.precision] = res.objective
        ref = objective["tf32"][-1]
        rows.append(
            _emit(
                {
                    "what": "objective",
                    "device": name,
                    "n": args.n,
                    "k": k,
                    "iters": args.iters,
                    "objective": objective,
                    "rel_diff_vs_tf32": {p: o[-1] / ref - 1 for p, o in objective.items()},
                }
            )
        )
    for k in args.ks:
        for prec, use_fused in modes:
            if prec == "tf32" and k != args.ks[0]:
                continue  # tf32 only at the first K: device time is scarce
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
            n = max(args.n, k)
            res = kmeans(x[:n], k, iters=args.iters, seed=0, precision=prec, device="cuda", fused=use_fused)
            peak = (torch.cuda.max_memory_allocated(dev) - base) / 2**30
            t = statistics.median(res.seconds[1:] or res.seconds)
            flops = 2 * n * k * args.d
            assigner = Assigner(res.centroids, precision=prec, device="cuda", fused=use_fused)
            assigner(x[:65536], 1)
            torch.cuda.synchronize()
            start = time.perf_counter()
            assigner(x[:n], 1)
            t_assign = time.perf_counter() - start
            rows.append(
                _emit(
                    {
                        "what": "kmeans",
                        "device": name,
                        "n": n,
                        "k": k,
                        "d": args.d,
                        "precision": res.precision,
                        "iteration_s": [round(s, 3) for s in res.seconds],
                        "median_iteration_s": round(t, 3),
                        "tflops": round(flops / t / 1e12, 1),
                        "vs_bf16_gemm": round(flops / t / 1e12 / best, 3),
                        "assign_only_s": round(t_assign, 3),
                        "assign_vs_bf16_gemm": round(flops / t_assign / 1e12 / best, 3),
                        "objective": res.objective,
                        "empty_clusters": int((res.counts == 0).sum()),
                        "peak_gib_over_data": round(peak, 2),
                        "peak_gib_total": round(torch.cuda.max_memory_allocated(dev) / 2**30, 2),
                        "centroid_gib_fp32": round(k * args.d * 4 / 2**30, 2),
                    }
                )
            )
            del assigner
            if prec == "bf16" and k == args.ks[0] and use_fused == has_fused and not args.no_checks:
                rows.append(_emit(_quality(x, res.centroids, name, has_fused)))
    del x
    for shape in args.assign:
        rows.append(_emit(_assign_only(*(int(v) for v in shape.split(":")), name, best, has_fused)))
    return rows


def _assign_only(n: int, k: int, d: int, name: str, best: float, has_fused: bool) -> dict:
    """One assignment pass (what a Lloyd iteration spends in the GEMM): N points against K centroids, top-1 and top-10."""
    torch.cuda.empty_cache()
    x, c = _data(n, d), torch.nn.functional.normalize(torch.randn(k, d, device="cuda"), dim=1)
    out = {"what": "assign", "device": name, "n": n, "k": k, "d": d}
    for top in (1, 10):
        assigner = Assigner(c, precision="bf16", device="cuda", fused=has_fused)
        assigner(x[:65536], top)
        torch.cuda.synchronize()
        start = time.perf_counter()
        assigner(x, top)
        t = time.perf_counter() - start
        out[f"top{top}_s"] = round(t, 3)
        out[f"top{top}_vs_bf16_gemm"] = round(2 * n * k * d / t / 1e12 / best, 3)
    return out


def _quality(x: torch.Tensor, centroids: np.ndarray, name: str, has_fused: bool, m: int = 16384) -> dict:
    """Top-1 agreement and distance excess of bf16 / tf32 scores against exact fp32 on m held-out points."""
    xs = _data(m, x.shape[1], seed=1)  # fresh points of the same distribution (K = N makes training points trivial)
    c = torch.from_numpy(centroids).cuda()
    modes = {"fp32": ("fp32", False), "tf32": ("tf32", False), "bf16": ("bf16", False)}
    if has_fused:
        modes["bf16_fused"] = ("bf16", True)
    picks = {
        p: torch.from_numpy(Assigner(c, precision=prec, device="cuda", fused=f)(xs, 1)[:, 0]).cuda()
        for p, (prec, f) in modes.items()
    }
    dist = {p: ((xs - c[i]) ** 2).sum(1) for p, i in picks.items()}
    others = [p for p in modes if p != "fp32"]
    return {
        "what": "quality",
        "device": name,
        "points": m,
        "k": int(c.shape[0]),
        **{f"{p}_top1_agree_fp32": round(float((picks[p] == picks["fp32"]).float().mean()), 4) for p in others},
        **{f"{p}_dist_excess": float(dist[p].sum() / dist["fp32"].sum() - 1) for p in others},
    }


def cpu(args) -> list[dict]:
    import faiss

    from curate.concepts.kmeans import faiss_kmeans

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2000, args.d)).astype(np.float32)
    x = centres[rng.integers(0, 2000, args.n)] + 0.3 * rng.standard_normal((args.n, args.d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    init = x[rng.choice(args.n, args.k, replace=False)]
    threads = torch.get_num_threads()
    ours = kmeans(x, args.k, iters=args.iters, init_centroids=init, device="cpu", precision="fp32")
    start = time.perf_counter()
    ref = faiss_kmeans(x, args.k, iters=args.iters, init_centroids=init)
    t_faiss = (time.perf_counter() - start) / args.iters
    t_ours = statistics.median(ours.seconds)
    return [
        _emit(
            {
                "what": "cpu",
                "device": f"CPU, {threads} torch threads, faiss {faiss.__version__} {faiss.omp_get_max_threads()} threads",
                "n": args.n,
                "k": args.k,
                "d": args.d,
                "iters": args.iters,
                "ours_s_per_iter": round(t_ours, 3),
                "faiss_s_per_iter": round(t_faiss, 3),
                "ours_over_faiss": round(t_ours / t_faiss, 3),
                "objective_rel_diff": ours.objective[-1] / ref.objective[-1] - 1,
            }
        )
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=("gpu", "cpu"))
    p.add_argument("--n", type=int)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--k", type=int, default=1024, help="cpu part")
    p.add_argument("--ks", type=int, nargs="+", default=[1_000_000, 2_000_000], help="gpu part")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--objective-k", type=int, default=100_000, help="gpu part: K of the same-init objective check")
    p.add_argument(
        "--modes",
        nargs="+",
        default=["fused", "bf16", "tf32"],
        choices=["fused", "bf16", "tf32"],
        help="gpu part: the k-means paths timed (fused: bf16 through the Triton kernel)",
    )
    p.add_argument(
        "--no-checks",
        action="store_true",
        help="gpu part: skip the same-init objective and top-1 quality rows (for very large N)",
    )
    p.add_argument(
        "--assign",
        nargs="*",
        default=[],
        metavar="N:K:D",
        help="gpu part: also time assignment alone at these shapes (K may exceed N), e.g. 1000000:2000000:768",
    )
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    args.n = args.n or (1_000_000 if args.part == "gpu" else 100_000)
    rows = gpu(args) if args.part == "gpu" else cpu(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
