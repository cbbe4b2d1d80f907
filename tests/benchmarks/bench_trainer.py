"""Trainer benchmarks on one GPU: model FLOP utilisation, timm parity, packing cost, partial-FC share.

    python tests/benchmarks/bench_trainer.py [--smoke] [--t4] [--quick]  # --smoke: debug flavour on CPU, no timing value
                                                                # --t4: only the partial-FC cases (and their base)
    python tests/benchmarks/bench_trainer.py --t3-sweep  # dense runs against one varlen call by distinct lengths

Figures (bf16 autocast, fp32 master weights, AdamW, per-block torch.compile), each with its
baseline measured in the same run:
* T1  model TFLOP/s of ViT-L/16 training steps at 224 px, 448 px and packed 2048-token codec
      micro-batches, divided by the bf16 GEMM TFLOP/s of the same card;
* T2  our images/s over timm ViT-L/16 + torch.compile, same batch, same loss on the embedding;
* T3  useful TFLOP/s of a packed mixed-length batch over a dense batch of equal total tokens
      (dense runs of equal length, the trainer's choice; one varlen call; FlexAttention);
* T4  partial-FC share of step time at 2M classes (sample rate 0.1, 8 of 10 labels drawn), with the
      trainer's update (clip + sampled-row AdamW) and with the reference's dense AdamW over every row,
      each against the same encoder stepped without the head in alternating rounds (median share);
      torch.profiler tables and timelines of the sampled head's step and the plain one go to $OUT.
Imports only torch (and timm for the baseline): the GPU machine has no webdataset or ray.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from train.config import HeadConfig, ModelConfig, OptimConfig, ParallelConfig  # noqa: E402
from train.loss import ConceptHeads  # noqa: E402
from train.model import Encoder  # noqa: E402
from train.optim import SampledRowAdamW  # noqa: E402
from train.packing import pack  # noqa: E402
from train.parallelize import parallelize  # noqa: E402

SMOKE = "--smoke" in sys.argv
T4_ONLY = "--t4" in sys.argv
T3_SWEEP = "--t3-sweep" in sys.argv  # where the trainer's DENSE_RUNS should sit
QUICK = "--quick" in sys.argv  # T1-T4 without the variants (whole-model compile, 448 px, FlexAttention)
DEV = torch.device("cpu" if SMOKE else "cuda")
FLAVOUR = "debug" if SMOKE else "large"
STEPS, WARMUP = (2, 1) if SMOKE else (10, 3)


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, steps=STEPS, warmup=WARMUP) -> float:
    """Median seconds per call after warm-up (compilation happens in the warm-up)."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def peak_reset():
    if DEV.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if DEV.type == "cuda" else 0.0


def gemm_tflops(n=8192) -> float:
    a = torch.randn(n, n, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=DEV, dtype=torch.bfloat16)
    dt = timed(lambda: a @ b, steps=30, warmup=5)
    return 2 * n**3 / dt / 1e12


def batch(lengths, patch=16, grid=None):
    """Random tokens at valid positions: images as full grids, longer samples as codec-like (t, h, w)."""
    items = []
    for n in lengths:
        side = int(n**0.5)
        if side * side == n:  # an image
            hh, ww = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
            pos = torch.stack([torch.zeros_like(hh), hh, ww], -1).reshape(-1, 3)
        else:  # codec tokens: n of a 64 x 16 x 16 grid
            idx = torch.randperm(64 * 256)[:n].sort().values
            pos = torch.stack([idx // 256, idx // 16 % 16, idx % 16], -1)
        items.append((torch.randn(n, 3 * patch * patch), pos))
    return pack(items).to(DEV)


def make_step(model, params, forward, heads_opt=None):
    """One training step; ``heads_opt``: the trainer's sampled-row AdamW of the heads, clipped as in train.loop."""
    opt = torch.optim.AdamW(params, lr=1e-4, fused=DEV.type == "cuda")

    def step():
        with torch.autocast(DEV.type, dtype=torch.bfloat16):
            loss = forward()
        loss.backward()
        if heads_opt is not None:
            heads_opt.clip(5.0)
        opt.step()  # the trainer's order (train.loop: the encoder's optimizer, then the heads')
        if heads_opt is not None:
            heads_opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def ours(mode="blocks", reset=True):
    """A fresh ViT; ``blocks``: per-block compile (the trainer's default), ``model``: whole-module compile."""
    if reset:
        torch._dynamo.reset()  # static shapes per case, like the timm baseline
    torch.manual_seed(0)
    enc = Encoder(ModelConfig(FLAVOUR)).to(DEV)
    if SMOKE:
        return enc, enc
    if mode == "model":
        enc.compile()
        return enc, enc
    return enc, parallelize(enc, ParallelConfig(compile=True), 1, DEV)


def useful_flops(enc, lengths) -> float:
    return sum(n * enc.flops_per_token(n) for n in lengths)


def run_case(res, name, lengths, mode="blocks", attention="runs", profile=""):
    """``attention``: ``runs`` (the trainer's choice: dense SDPA per run of equal length, varlen beyond
    ``DENSE_RUNS`` runs), ``varlen`` (one varlen flash call) or ``flex`` (FlexAttention document mask)."""
    import train.packing as packing

    saved = packing._varlen, packing.DENSE_RUNS
    if attention in ("varlen", "flex"):
        packing.DENSE_RUNS = 0
    elif attention == "dense":  # dense runs however many there are
        packing.DENSE_RUNS = 10**6
    if attention == "flex":
        packing._varlen = None
    peak_reset()
    enc, model = ours(mode)
    b = batch(lengths)
    step = make_step(model, enc.parameters(), lambda: model(b).float().square().mean())
    dt = timed(step)
    if profile:
        write_profile(step, profile)
    packing._varlen, packing.DENSE_RUNS = saved
    tf = useful_flops(enc, lengths) / dt / 1e12
    res[name] = {
        "s_per_step": dt,
        "samples_per_s": len(lengths) / dt,
        "tflops": tf,
        "of_gemm": tf / res["gemm_tflops"],
        "peak_gib": peak_gib(),
    }
    print(name, json.dumps(res[name]), flush=True)
    save(res)
    torch.cuda.empty_cache() if DEV.type == "cuda" else None


def pfc_case(
    res, name, classes, local_rows_factor, lengths, update="sampled", profile=False, overlap=True, moments=torch.float32
):
    """Step time with a partial-FC head; ``local_rows_factor`` x the local batch stands in for gathered ranks.

    ``update``: ``sampled`` (the trainer's default: clip, then AdamW on the scored rows) or ``dense``
    (every row in the torch AdamW, no clipping: the reference's update). ``overlap``: the sampled row
    update on its own stream (the trainer's default) or queued behind the encoder's step. ``moments``: the
    sampled update's AdamW moments (``optim.head_moments``).
    """
    peak_reset()
    enc, model = ours("blocks", reset=False)  # same shapes as vit_l_224_bs128: no recompilation
    head = HeadConfig(name="image", num_classes=classes, sample_rate=0.1, draw=8)
    heads = ConceptHeads((head,), enc.dim, 0, DEV, sampled_update=update == "sampled", moments=moments)
    b = batch(lengths)
    n = len(lengths) * local_rows_factor
    labels = torch.randint(0, classes, (n, 10))
    modality = ["image"] * n
    counter = iter(range(10**9))

    def with_head():
        emb = model(b).float()
        emb = torch.cat([emb] * local_rows_factor) if local_rows_factor > 1 else emb
        return heads(emb, modality, labels, seed=0, step=next(counter))[0]

    params = list(enc.parameters()) + (list(heads.parameters()) if update == "dense" else [])
    heads_opt = SampledRowAdamW(heads, OptimConfig(lr=1e-4), overlap=overlap) if update == "sampled" else None
    step = make_step(model, params, with_head, heads_opt)
    allocs = alloc_counts()
    res[name] = {"s_per_step": timed(step), "peak_gib": peak_gib()}
    res[name]["allocator_during_timing"] = alloc_counts(allocs)
    # the head's memory over the plain encoder step, against fp32 centres + two AdamW moments
    res[name]["head_gib_over_12_bytes_per_entry"] = (res[name]["peak_gib"] - res["vit_l_224_bs128"]["peak_gib"]) / (
        classes * enc.dim * 12 / 2**30
    )
    # T4: the same encoder stepped without the head, in rounds alternating with the head's steps
    base_step = make_step(model, enc.parameters(), lambda: model(b).float().square().mean())
    with_s, without_s = paired(step, base_step)
    shares = sorted(1 - b / a for a, b in zip(with_s, without_s, strict=True))
    res[name]["paired"] = {"with_s": with_s, "without_s": without_s, "share": shares[len(shares) // 2]}
    res[name]["paired"]["share_min_max"] = [shares[0], shares[-1]]
    if profile:
        write_profile(step, "profile_pfc.txt", trace="trace_pfc.json")
        write_profile(base_step, "profile_base.txt", trace="trace_base.json")
    if heads_opt is not None:  # the head alone on a fixed embedding: its own GPU time, without the encoder around it
        emb0 = torch.randn(n, enc.dim, device=DEV, requires_grad=True)

        def head_only():
            with torch.autocast(DEV.type, dtype=torch.bfloat16):
                loss = heads(emb0, modality, labels, seed=0, step=next(counter))[0]
            loss.backward()
            heads_opt.clip(5.0)
            heads_opt.step()
            emb0.grad = None

        res[name]["head_alone_s"] = timed(head_only)
        if profile:
            write_profile(head_only, "profile_head_alone.txt")
    print(name, json.dumps(res[name]), flush=True)
    torch.cuda.empty_cache() if DEV.type == "cuda" else None


def paired(a, b, rounds=1 if SMOKE else 5) -> tuple[list[float], list[float]]:
    """Median seconds per step of ``a`` and of ``b`` in each of ``rounds`` alternating rounds: a lent card's
    clocks drift over minutes, and a share of a few % of two steps timed minutes apart is mostly that drift."""
    for f in (a, b):
        for _ in range(WARMUP):
            f()
    times = [], []
    for _ in range(rounds):
        for f, out in zip((a, b), times, strict=True):
            out.append(timed(f, warmup=1))
    return times


def alloc_counts(since: dict | None = None) -> dict:
    """The caching allocator's device allocations, frees and retries (a retry frees the cache and syncs)."""
    if DEV.type != "cuda":
        return {}
    stats = torch.cuda.memory_stats()
    now = {k: stats.get(k, 0) for k in ("num_device_alloc", "num_device_free", "num_alloc_retries")}
    return {k: v - since[k] for k, v in now.items()} if since else now


def write_profile(step, filename, trace=""):
    """torch.profiler over 3 steps: kernels by GPU time (with input shapes), and the step's GPU-busy share;
    ``trace``: also the timeline (Chrome trace, gzipped), to find where the GPU waits for the host."""
    if DEV.type != "cuda":
        return
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    sync()
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=acts, record_shapes=True) as prof:
        for _ in range(3):
            step()
        sync()
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    busy = sum(e.self_device_time_total for e in events) / 1e6  # us -> s
    head = f"3 steps: {wall * 1e3:.1f} ms wall (profiled), {busy * 1e3:.1f} ms of GPU kernels\n\n"
    table = events.table(sort_by="self_cuda_time_total", row_limit=40, max_name_column_width=70)
    shapes = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=50, max_shapes_column_width=90
    )
    out = Path(os.environ.get("OUT", "out/bench"))
    out.mkdir(parents=True, exist_ok=True)
    (out / filename).write_text(head + table + "\n\nby input shape\n" + shapes)
    if trace:
        prof.export_chrome_trace(str(out / f"{trace}.gz"))  # torch gzips a path ending in .gz


def save(res):
    out = Path(os.environ.get("OUT", "out/bench"))  # $OUT on the device machine
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_trainer.json").write_text(json.dumps(res, indent=1))


def sweep_lengths(distinct: int, total: int = 16384) -> list[int]:
    """A pack of ``distinct`` sample lengths (256-2048 tokens, multiples of 64), about total / distinct tokens each."""
    lengths = [256 + round(i * 1792 / max(1, distinct - 1) / 64) * 64 for i in range(distinct)]
    return [n for n in lengths for _ in range(max(1, round(total / distinct / n)))]


def t3_sweep(res):
    """T3 by the number of distinct lengths in a pack: dense SDPA per run against one varlen call."""
    run_case(res, "codec_2048x8", [2048] * (1 if SMOKE else 8))
    for distinct in (2, 4, 8, 16):
        lengths = sweep_lengths(distinct, 2048 if SMOKE else 16384)
        for attention in ("dense", "varlen"):
            name = f"sweep_{distinct}_{attention}"
            run_case(res, name, lengths, attention=attention)
            res[name]["over_dense_2048x8"] = res[name]["tflops"] / res["codec_2048x8"]["tflops"]
            res[name]["tokens"] = sum(lengths)
    save(res)
    print(json.dumps(res, indent=1))


def main():
    res = {"device": torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu", "torch": torch.__version__}
    res["gemm_tflops"] = gemm_tflops(1024 if SMOKE else 8192)
    print(f"bf16 GEMM {res['gemm_tflops']:.0f} TFLOP/s", flush=True)
    if T3_SWEEP:
        return t3_sweep(res)
    k = 1 if SMOKE else 0  # smoke: tiny batches
    img224 = [196] * (4 if k else 128)
    # ------------------------------------------------------------------ T1, T2 (ours), T3
    if not T4_ONLY:
        run_case(res, "vit_l_224_bs128", img224, profile="profile_ours_224.txt")
        timm_case(res, img224)
        if not QUICK:
            run_case(res, "vit_l_224_bs128_model_compile", img224, mode="model")
            run_case(res, "vit_l_448_bs32", [784] * (2 if k else 32))
        run_case(res, "codec_2048x8", [2048] * (1 if k else 8))
        mixed = [2048, 1024, 512] if k else [2048] * 4 + [1024] * 4 + [512] * 8
        run_case(res, "mixed_16k_runs", mixed)
        run_case(res, "mixed_16k_varlen", mixed, attention="varlen")
        if not QUICK:
            run_case(res, "mixed_16k_flex", mixed, attention="flex")
        for variant in ("runs", "varlen") + (() if QUICK else ("flex",)):
            res[f"T3_{variant}_over_dense"] = res[f"mixed_16k_{variant}"]["tflops"] / res["codec_2048x8"]["tflops"]
        save(res)

    # ------------------------------------------------------------------ T4: partial FC at 2M classes
    run_case(res, "vit_l_224_bs128", img224)  # re-measured right before the head cases, same compiled graphs
    big = 20_000 if k else 2_000_000
    pfc_case(res, "pfc_2M_one_gpu", big, 1, img224, profile=True)
    pfc_case(res, "pfc_2M_one_gpu_bf16_moments", big, 1, img224, moments=torch.bfloat16)
    pfc_case(res, "pfc_2M_one_gpu_no_overlap", big, 1, img224, overlap=False)
    pfc_case(res, "pfc_2M_one_gpu_dense", big, 1, img224, update="dense")
    pfc_case(res, "pfc_2M_shard_of_8", big // 8, 8, img224)
    pfc_case(res, "pfc_2M_shard_of_8_dense", big // 8, 8, img224, update="dense")
    pfc_case(res, "pfc_2M_shard_of_8_bf16_moments", big // 8, 8, img224, moments=torch.bfloat16)
    cases = ("one_gpu", "one_gpu_bf16_moments", "one_gpu_no_overlap", "one_gpu_dense", "shard_of_8", "shard_of_8_dense")
    for case in cases + ("shard_of_8_bf16_moments",):  # each against the encoder alone, timed in the same rounds
        res[f"T4_share_{case}"] = res[f"pfc_2M_{case}"]["paired"]["share"]
    if not T4_ONLY and not QUICK:
        res["T2_ours_model_compile_over_timm"] = (
            res["vit_l_224_bs128_model_compile"]["samples_per_s"] / res["timm_vit_l_224_bs128"]["samples_per_s"]
        )
    save(res)
    print(json.dumps(res, indent=1))


def timm_case(res, img224):
    """T2's baseline: timm ViT-L/16 + torch.compile, same batch, same loss on the embedding."""
    try:
        import timm
    except ImportError:
        res["timm_vit_l_224_bs128"] = "timm not installed"
        return
    torch._dynamo.reset()
    torch.manual_seed(0)
    n = len(img224)
    name = "vit_large_patch16_224" if not SMOKE else "vit_tiny_patch16_224"
    tm = timm.create_model(name, num_classes=0).to(DEV)
    tmc = torch.compile(tm) if not SMOKE else tm
    x = torch.randn(n, 3, 224, 224, device=DEV)
    step = make_step(tmc, tm.parameters(), lambda: tmc(x).float().square().mean())
    dt = timed(step)
    write_profile(step, "profile_timm_224.txt")
    res["timm_vit_l_224_bs128"] = {"s_per_step": dt, "samples_per_s": n / dt}
    res["T2_ours_over_timm"] = res["vit_l_224_bs128"]["samples_per_s"] / (n / dt)
    print("timm", json.dumps(res["timm_vit_l_224_bs128"]), flush=True)
    save(res)
    torch.cuda.empty_cache() if DEV.type == "cuda" else None


if __name__ == "__main__":
    main()
