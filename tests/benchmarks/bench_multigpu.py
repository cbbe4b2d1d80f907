"""Multi-GPU benchmarks (issue 11): trainer parity and scaling, k-means over several GPUs.

    python tests/benchmarks/bench_multigpu.py [--gpus N] [--parts parity,scaling,kmeans]   # NCCL, N >= 2 GPUs
    python tests/benchmarks/bench_multigpu.py --cpu-smoke      # the same code on 2 gloo CPU processes, tiny sizes

The script spawns its own processes (not torchrun): every comparison needs a run on one GPU and a
run on N, each in a process group of its own size, so it spawns a group of 1, then a group of N.

* parity   the trainer's step (below) for ``--steps`` steps on 1 GPU with the global batch and on
           N GPUs with 1/N of it each, under DDP and under FSDP2, bf16 autocast: per-step losses
           and gradient norms side by side. The heads score every class (sample_rate = 1.0): below 1
           each rank samples negatives among its own centre rows, so the scored set depends on the
           sharding by design. bf16 GEMMs of a different batch shape round differently, so bf16
           losses are expected to drift apart slowly (``--parity-rtol``, default 2 %, per step);
           ``--dtype fp32`` gives the tight check (the CPU smoke: 2e-7 in fp32, 8e-4 in bf16).
* scaling  samples/s of the same step with the same per-GPU batch on N GPUs and on 1, as
           samples/s(N) / (N x samples/s(1)), for each of ``--scale-batches``; heads at
           ``--sample-rate``; FSDP2 also without resharding after forward (``fsdp_keep``).
* kmeans   ``curate.concepts.kmeans.kmeans`` on all the points on one GPU and with ``group=`` on N
           GPUs, each holding 1/N of the points, from the same (random, seeded) init: objective per
           iteration, relative difference, and the speed-up (median iteration time, first one excluded).

The trainer step is ``train.loop``'s step without its data stream and checkpointing (the GPU machine
has no webdataset): encoder, concept heads, ``parallelize``, AdamW, learning-rate schedule, separate
clipping of backbone and heads, all from ``train``. Inputs are synthetic 224 px "images" (196 tokens)
from a seeded pool, indexed by global sample number, so any rank count sees the same global batch.
Imports torch and numpy only (no ray, webdataset or av).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402

from curate.concepts.kmeans import kmeans  # noqa: E402
from train.config import FLAVOURS, HeadConfig, ModelConfig, OptimConfig, ParallelConfig  # noqa: E402
from train.loss import ConceptHeads  # noqa: E402
from train.model import Encoder  # noqa: E402
from train.optim import SampledRowAdamW, build_optimizer, set_lr, step_if_finite  # noqa: E402
from train.packing import pack  # noqa: E402
from train.parallelize import clip_grads, parallelize  # noqa: E402

PARTS = ("parity", "scaling", "kmeans")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="2 gloo processes on the CPU at tiny sizes")
    p.add_argument("--gpus", type=int, default=0, help="GPUs of the N-GPU runs (default: all visible)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--flavour", default="base", choices=sorted(FLAVOURS))
    p.add_argument(
        "--batch",
        type=int,
        default=128,
        help="samples per GPU per step (parity: global = N x this); 128 is the reference's stage-1 per-GPU batch",
    )
    p.add_argument("--scale-batches", default="32,128", help="comma-separated per-GPU batches of the scaling runs")
    p.add_argument("--tokens", type=int, default=196, help="tokens per sample (a square number: an image grid)")
    p.add_argument("--classes", type=int, default=2_000_000, help="classes of the one concept head (issue: 2M)")
    p.add_argument("--steps", type=int, default=50, help="parity steps")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--compile", action="store_true", help="per-block torch.compile, as in training")
    p.add_argument("--scale-steps", type=int, default=20, help="timed steps of the scaling runs")
    p.add_argument("--scale-warmup", type=int, default=5)
    p.add_argument("--sample-rate", type=float, default=0.1, help="partial-FC sample rate of the scaling runs")
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="STEPS",
        help="profile this many timed scaling steps (rank 0) and write the op table to $OUT",
    )
    p.add_argument("--parity-rtol", type=float, default=0.02, help="largest per-step relative loss difference")
    p.add_argument("--kmeans-n", type=int, default=2_000_000)
    p.add_argument("--kmeans-d", type=int, default=512)
    p.add_argument("--kmeans-k", type=int, default=1_000_000)
    p.add_argument("--kmeans-iters", type=int, default=4)
    args = p.parse_args(argv)
    args.parts = [s for s in args.parts.split(",") if s]
    args.scale_batches = [int(b) for b in str(args.scale_batches).split(",") if b]
    if set(args.parts) - set(PARTS):
        p.error(f"unknown part(s) {sorted(set(args.parts) - set(PARTS))}; choose from {PARTS}")
    if args.cpu_smoke:
        args.gpus, args.flavour, args.batch, args.tokens, args.classes = 2, "debug", 2, 4, 37
        args.scale_batches = [2]
        args.steps, args.scale_steps, args.scale_warmup = 3, 2, 1
        args.kmeans_n, args.kmeans_d, args.kmeans_k, args.kmeans_iters = 3000, 16, 50, 3
    return args


# ---------------------------------------------------------------------------------------------- trainer


class Pool:
    """A seeded pool of synthetic samples; global sample ``g`` is pool entry ``g % size``."""

    def __init__(self, size: int, tokens: int, patch: int, classes: int, dev: torch.device, seed: int = 0):
        side = int(tokens**0.5)
        if side * side != tokens:
            raise ValueError(f"--tokens {tokens} is not a square number")
        gen = torch.Generator(device=dev).manual_seed(seed)
        self.tokens = torch.randn(size, tokens, 3 * patch * patch, device=dev, generator=gen)
        self.labels = torch.randint(0, classes, (size, 10), device=dev, generator=gen).cpu()
        hh, ww = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        self.pos = torch.stack([torch.zeros_like(hh), hh, ww], -1).reshape(-1, 3).float().to(dev)
        self.size, self.dev = size, dev

    def batch(self, step: int, rank: int, world: int, per_rank: int):
        """This rank's rows of global batch ``step`` (per_rank x world samples), packed."""
        first = step * per_rank * world + rank * per_rank
        idx = [(first + i) % self.size for i in range(per_rank)]
        packed = pack([(self.tokens[i], self.pos) for i in idx])
        packed = packed.to(self.dev)
        return packed, ["image"] * per_rank, self.labels[idx]


def sync(dev: torch.device):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def trainer_run(
    args,
    mode: str,
    per_rank: int,
    steps: int,
    sample_rate: float,
    rank,
    world,
    dev,
    profile: str = "",
    reshard: bool = True,
) -> dict:
    """``steps`` optimizer steps of train.loop's step (one micro-batch each): losses, norms, step times.

    ``profile``: a name; the last ``--profile`` steps run under torch.profiler and rank 0 writes
    the op table (sorted by GPU time) to ``$OUT/profile_<name>.txt``.
    """
    model_cfg = ModelConfig(args.flavour)
    head = HeadConfig(name="image", modalities=("image",), num_classes=args.classes, sample_rate=sample_rate)
    optim_cfg = OptimConfig(lr=1e-3, warmup_steps=min(5, steps // 4))
    par = ParallelConfig(mode=mode, compile=args.compile, dtype=args.dtype, fsdp_reshard=reshard)
    seed = 0
    torch.manual_seed(seed)
    encoder = Encoder(model_cfg).to(dev)
    heads = ConceptHeads((head,), encoder.dim, seed, dev, sampled_update=optim_cfg.head_update == "sampled")
    wrapped = parallelize(encoder, par, world, dev)
    optimizer = build_optimizer(encoder, heads, optim_cfg)
    head_opt = SampledRowAdamW(heads, optim_cfg) if heads.sampled_update else None
    optimizers = [optimizer] + ([head_opt] if head_opt else [])
    pool = Pool(max(4 * per_rank * world, 64), args.tokens, model_cfg.patch, args.classes, dev)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if par.dtype == "bf16" else contextlib.nullcontext()
    out = {"loss": [], "grad_norm": [], "head_grad_norm": [], "step_s": []}
    prof = None
    for step in range(steps):
        if profile and step == steps - args.profile:
            acts = [torch.profiler.ProfilerActivity.CPU] + (
                [torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else []
            )
            prof = torch.profiler.profile(activities=acts)
            prof.__enter__()
        sync(dev)
        t0 = time.perf_counter()
        set_lr(optimizers, step, steps, optim_cfg)
        packed, modality, labels = pool.batch(step, rank, world, per_rank)
        with autocast:
            emb = wrapped(packed)
            loss, _ = heads(emb.float(), modality, labels, seed, step, 0)
        loss.backward()
        grad_norm = clip_grads(list(encoder.parameters()), optim_cfg.clip)
        head_norm = head_opt.clip(optim_cfg.clip) if head_opt else clip_grads(list(heads.parameters()), optim_cfg.clip)
        step_if_finite(optimizers, grad_norm, head_norm)
        out["loss"].append(float(loss.detach()))
        out["grad_norm"].append(float(grad_norm))
        out["head_grad_norm"].append(float(head_norm))
        sync(dev)
        out["step_s"].append(time.perf_counter() - t0)
    if prof is not None:
        prof.__exit__(None, None, None)
        if rank == 0 and os.environ.get("OUT"):
            sort = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
            table = prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=70)
            Path(os.environ["OUT"], f"profile_{profile}.txt").write_text(table)
    del wrapped, encoder, heads, optimizer, head_opt, optimizers, pool
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    dist.barrier()
    return out


# ---------------------------------------------------------------------------------------------- k-means


def kmeans_points(n: int, d: int, rank: int, world: int, dev: torch.device) -> torch.Tensor:
    """This rank's contiguous slice of N unit vectors around N/20 seeded centres (the same N for any world)."""
    gen = torch.Generator(device=dev).manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(max(1, n // 20), d, device=dev, generator=gen), dim=1)
    x = centres[torch.randint(0, centres.shape[0], (n,), device=dev, generator=gen)]
    x = torch.nn.functional.normalize(x + 0.05 * torch.randn(n, d, device=dev, generator=gen), dim=1)
    lo, hi = rank * n // world, (rank + 1) * n // world
    return x[lo:hi].clone()


def kmeans_run(args, rank, world, dev) -> dict:
    x = kmeans_points(args.kmeans_n, args.kmeans_d, rank, world, dev)
    group = dist.group.WORLD if world > 1 else None  # one GPU: the single-process path itself
    res = kmeans(x, args.kmeans_k, iters=args.kmeans_iters, seed=0, init="random", device=dev.type, group=group)
    del x
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    dist.barrier()
    return {
        "objective": res.objective,
        "seconds": res.seconds,
        "precision": res.precision,
        "empty": int((res.counts == 0).sum()),
        "centroid_checksum": float(abs(res.centroids).sum()),
    }


# ---------------------------------------------------------------------------------------------- processes


def worker(rank: int, world: int, port: int, args, out):
    if args.cpu_smoke:
        torch.set_num_threads(1)
        dev, backend = torch.device("cpu"), "gloo"
    else:
        torch.cuda.set_device(rank)
        dev, backend = torch.device("cuda", rank), "nccl"
    kw = {"device_id": dev} if dev.type == "cuda" else {}
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, **kw)
    res = {}
    try:
        if "parity" in args.parts:
            # one GPU: parallelize() leaves a world of one unwrapped, so DDP and FSDP2 share one reference
            for mode in ("ddp",) if world == 1 else ("ddp", "fsdp"):
                per_rank = args.batch * args.gpus // world
                res[f"parity_{mode}"] = trainer_run(args, mode, per_rank, args.steps, 1.0, rank, world, dev)
                log(rank, f"parity {mode} world {world}: losses {fmt(res[f'parity_{mode}']['loss'][:3])} ...")
        if "scaling" in args.parts:
            # fsdp_keep: FSDP2 without resharding after forward (ParallelConfig.fsdp_reshard = false)
            for batch in args.scale_batches:
                for mode in ("ddp",) if world == 1 else ("ddp", "fsdp", "fsdp_keep"):
                    steps = args.scale_warmup + args.scale_steps
                    name = f"{mode}_b{batch}_world{world}" if args.profile else ""
                    run = trainer_run(
                        args,
                        mode.split("_")[0],
                        batch,
                        steps,
                        args.sample_rate,
                        rank,
                        world,
                        dev,
                        name,
                        reshard=mode != "fsdp_keep",
                    )
                    step_s = statistics.median(run["step_s"][args.scale_warmup :])
                    res[f"scaling_{mode}_b{batch}"] = {"step_s": step_s, "samples_per_s": batch * world / step_s}
                    log(rank, f"scaling {mode} batch {batch} world {world}: {batch * world / step_s:.1f} samples/s")
        if "kmeans" in args.parts:
            res["kmeans"] = kmeans_run(args, rank, world, dev)
            log(rank, f"kmeans world {world}: objective {fmt(res['kmeans']['objective'])}")
    finally:
        if rank == 0:
            out[world] = res
        dist.destroy_process_group()


def log(rank: int, msg: str):
    if rank == 0:
        print(f"[bench_multigpu] {msg}", flush=True)


def fmt(xs) -> str:
    return "[" + ", ".join(f"{x:.6g}" for x in xs) + "]"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(world: int, args) -> dict:
    out = mp.Manager().dict()
    mp.spawn(worker, args=(world, free_port(), args, out), nprocs=world, join=True)
    if world not in out:
        raise RuntimeError(f"the {world}-process run returned nothing")
    return out[world]


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def report(args, one: dict, many: dict) -> dict:
    n, summary = args.gpus, {}
    for mode in ("ddp", "fsdp"):
        key = f"parity_{mode}"
        if key not in many:
            continue
        ref, got = one["parity_ddp"], many[key]
        diffs = {k: [rel(a, b) for a, b in zip(got[k], ref[k], strict=True)] for k in ("loss", "grad_norm")}
        summary[key] = {
            "steps": args.steps,
            "loss_first_rel_diff": diffs["loss"][0],
            "loss_max_rel_diff": max(diffs["loss"]),
            "loss_last10_mean_1gpu": statistics.mean(ref["loss"][-10:]),
            f"loss_last10_mean_{n}gpu": statistics.mean(got["loss"][-10:]),
            "grad_norm_max_rel_diff": max(diffs["grad_norm"]),
            "pass": max(diffs["loss"]) <= args.parity_rtol,
        }
    for batch in args.scale_batches:
        for mode in ("ddp", "fsdp", "fsdp_keep"):
            key = f"scaling_{mode}_b{batch}"
            if key in many:
                one_s, many_s = one[f"scaling_ddp_b{batch}"]["samples_per_s"], many[key]["samples_per_s"]
                summary[key] = {
                    "samples_per_s_1": one_s,
                    f"samples_per_s_{n}": many_s,
                    "speedup": many_s / one_s,
                    "efficiency": many_s / (n * one_s),
                }
    if "kmeans" in many:
        a, b = one["kmeans"], many["kmeans"]
        t1, tn = (statistics.median(r["seconds"][1:] or r["seconds"]) for r in (a, b))
        summary["kmeans"] = {
            "n": args.kmeans_n,
            "d": args.kmeans_d,
            "k": args.kmeans_k,
            "iters": args.kmeans_iters,
            "precision": a["precision"],
            "objective_1": a["objective"],
            f"objective_{n}": b["objective"],
            "objective_max_rel_diff": max(rel(x, y) for x, y in zip(b["objective"], a["objective"], strict=True)),
            "s_per_iter_1": t1,
            f"s_per_iter_{n}": tn,
            "speedup": t1 / tn,
            "empty_1": a["empty"],
            f"empty_{n}": b["empty"],
        }
    return summary


def main(argv=None) -> int:
    args = parse(argv)
    if "RANK" in os.environ and "LOCAL_RANK" in os.environ:
        sys.exit("bench_multigpu: run it with plain python (it spawns its own 1- and N-process groups), not torchrun")
    if not args.cpu_smoke:
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if visible < 2:
            sys.exit(
                f"bench_multigpu: needs at least 2 GPUs, {visible} visible "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                "--cpu-smoke runs the same code on 2 CPU processes"
            )
        args.gpus = args.gpus or visible
        if not 2 <= args.gpus <= visible:
            sys.exit(f"bench_multigpu: --gpus {args.gpus} but {visible} GPUs are visible")
        where = f"{args.gpus} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    else:
        where = f"CPU smoke (gloo, 2 processes), torch {torch.__version__}"
    print(f"[bench_multigpu] {machine(where)}", flush=True)
    print(f"[bench_multigpu] {json.dumps(vars(args))}", flush=True)
    start = time.perf_counter()
    one = spawn(1, args)
    many = spawn(args.gpus, args)
    summary = {
        "machine": machine(where),
        "args": vars(args),
        **report(args, one, many),
        "raw": {"1": one, str(args.gpus): many},
        "wall_s": time.perf_counter() - start,
    }
    for key, val in summary.items():
        if key not in ("raw", "args", "machine"):
            print(f"{key}: {json.dumps(val)}", flush=True)
    if os.environ.get("OUT"):
        out = Path(os.environ["OUT"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_multigpu.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
