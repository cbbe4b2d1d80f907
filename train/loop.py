"""The training loop: build, resume, then step; read top to bottom.

One optimizer step = ``accum`` packed micro-batches, each forwarded under bf16 autocast
(fp32 master weights) and scored by the concept heads; then clip (backbone and heads
separately), AdamW, and a learning rate that is a pure function of the step. Metrics go to
``metrics.jsonl`` and a console line on rank 0; checkpoints every ``save_every`` steps and
at the end.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import manifests
from train.checkpoint import Checkpointer
from train.config import RunConfig
from train.data import Stream
from train.loss import ConceptHeads
from train.model import Encoder
from train.optim import SampledRowAdamW, build_optimizer, set_lr, step_if_finite
from train.parallelize import clip_grads, parallelize, setup_distributed


def train(cfg: RunConfig) -> list[dict]:
    """Run (or resume) ``cfg``; returns the metric records logged by this process."""
    rank, world, device = setup_distributed()
    run_dir = Path(cfg.out_dir) / cfg.name
    config_toml = manifests.resolved_toml(cfg)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(config_toml)

    # ---------------------------------------------------------------- model, heads, optimizer
    torch.manual_seed(cfg.seed)
    encoder = Encoder(cfg.model).to(device)
    sampled = cfg.optim.head_update == "sampled"
    heads = ConceptHeads(cfg.heads, encoder.dim, cfg.seed, device, sampled_update=sampled)
    wrapped = parallelize(encoder, cfg.parallel, world, device)
    model = nn.ModuleDict({"encoder": wrapped, "heads": heads})
    optimizer = build_optimizer(encoder, heads, cfg.optim)  # the encoder's (and dense heads') AdamW
    head_opt = SampledRowAdamW(heads, cfg.optim) if sampled else None  # its state lives in the heads' buffers
    optimizers = [optimizer] + ([head_opt] if head_opt else [])
    ckpt = Checkpointer(run_dir / "checkpoints", cfg, model, optimizer)

    # ---------------------------------------------------------------- resume or initialise
    start, data_state = ckpt.resume()
    if start == 0 and cfg.init_from:
        kept = ckpt.init_from(cfg.init_from)
        if rank == 0:
            print(f"[train] initialised from {cfg.init_from} (encoder, heads {kept})")
    num_classes = {m: h.num_classes for h in cfg.heads for m in h.modalities}
    label_fields = {m: h.labels for h in cfg.heads for m in h.modalities}
    stream = Stream(
        cfg.data,
        cfg.model.patch,
        num_classes,
        cfg.seed,
        rank,
        world,
        cfg.accum,
        data_state,
        label_fields,
        pin_memory=device.type == "cuda",
    )
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if cfg.parallel.dtype == "bf16" else contextlib.nullcontext()
    )
    ddp = isinstance(wrapped, nn.parallel.DistributedDataParallel)
    log = (run_dir / "metrics.jsonl").open("a") if rank == 0 else None
    records: list[dict] = []
    record: dict = {}
    bad_run = bad_steps = 0  # steps skipped for non-finite gradients: in a row, and in this process's run

    # ---------------------------------------------------------------- loop
    try:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            lr = set_lr(optimizers, step, cfg.steps, cfg.optim)
            loss_sum, parts_sum, samples, tokens = 0.0, {}, 0, 0
            for micro in range(cfg.accum):
                batch = next(stream)
                packed = batch.packed.to(device)
                last = micro == cfg.accum - 1  # gradients are reduced across ranks only on the last micro-batch
                sync = contextlib.nullcontext() if not ddp or last else wrapped.no_sync()
                if hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP2
                    wrapped.set_requires_gradient_sync(last)
                with sync:
                    with autocast:
                        emb = wrapped(packed)
                        loss, parts = heads(emb.float(), batch.modality, batch.labels, cfg.seed, step, micro)
                    (loss / cfg.accum).backward()
                loss_sum += float(loss.detach()) / cfg.accum
                for k, v in parts.items():
                    parts_sum[k] = parts_sum.get(k, 0.0) + float(v) / cfg.accum
                samples += packed.batch
                tokens += packed.tokens.shape[0]
            grad_norm = clip_grads(list(encoder.parameters()), cfg.optim.clip)
            head_norm = (
                head_opt.clip(cfg.optim.clip) if head_opt else clip_grads(list(heads.parameters()), cfg.optim.clip)
            )
            if step_if_finite(optimizers, grad_norm, head_norm):
                bad_run = 0
            else:
                bad_run, bad_steps = bad_run + 1, bad_steps + 1
                if rank == 0:
                    print(
                        f"[train] step {step + 1}: non-finite gradients (norm {float(grad_norm):.3g}, heads "
                        f"{float(head_norm):.3g}); step skipped",
                        flush=True,
                    )
                if bad_run > cfg.max_bad_steps:
                    raise ValueError(
                        f"{bad_run} consecutive steps with non-finite gradients up to step {step + 1}; "
                        "lower optim.lr, or train in fp32 (parallel.dtype) to find the cause"
                    )

            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                counts = torch.tensor([samples, tokens], dtype=torch.float64, device=device)
                if world > 1:
                    dist.all_reduce(counts)
                dt = time.perf_counter() - t0
                record = {
                    "step": step + 1,
                    "loss": loss_sum,
                    **{f"loss/{k}": v for k, v in parts_sum.items()},
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "head_grad_norm": float(head_norm),
                    "samples": int(counts[0]),
                    "tokens": int(counts[1]),
                    "step_s": dt,
                    "skipped_steps": bad_steps,
                    "samples_per_s": float(counts[0]) / dt,
                }
                records.append(record)
                if log:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    heads_txt = " ".join(f"{k}={v:.3f}" for k, v in parts_sum.items())
                    print(
                        f"[train] step {step + 1}/{cfg.steps} loss {loss_sum:.4f} ({heads_txt}) lr {lr:.2e} "
                        f"gnorm {float(grad_norm):.2f} {record['samples_per_s']:.1f} samples/s",
                        flush=True,
                    )
            if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 == cfg.steps:
                ckpt.save(step + 1, stream.state, record, config_toml)
    finally:
        stream.close()
        if log:
            log.close()
    return records
