"""The training loop: ``build`` (model, heads, optimizers, checkpoint, stream), then ``train_step``
and ``log_step`` per step, as ``train`` reads top to bottom.

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
from dataclasses import dataclass
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
from train.nonfinite import diagnose, finite
from train.optim import SampledRowAdamW, build_optimizer, set_lr, step_if_finite
from train.parallelize import clip_grads, parallelize, setup_distributed


@dataclass
class Trainer:
    """What every step of one run shares: built once by ``build``; the skip counters change per step."""

    cfg: RunConfig
    rank: int
    world: int
    device: torch.device
    run_dir: Path
    config_toml: str
    encoder: Encoder  # the bare module: its parameters are clipped apart from the heads'
    wrapped: nn.Module  # the encoder as ``parallelize`` returned it (DDP, FSDP2 or itself)
    heads: ConceptHeads
    optimizers: list
    head_opt: SampledRowAdamW | None
    ckpt: Checkpointer
    stream: Stream
    start: int
    autocast: contextlib.AbstractContextManager
    bad_run: int = 0  # steps skipped for non-finite gradients in a row
    bad_steps: int = 0  # ... and in this process's run


@dataclass
class StepMetrics:
    """One optimizer step's numbers, summed over its micro-batches on this rank."""

    lr: float
    loss: float
    parts: dict[str, float]
    grad_norm: torch.Tensor
    head_norm: torch.Tensor
    samples: int
    tokens: int


def build(cfg: RunConfig) -> Trainer:
    """Join the process group, write the resolved config, build the model and resume (or initialise)."""
    rank, world, device = setup_distributed()
    run_dir = Path(cfg.out_dir) / cfg.name
    config_toml = manifests.resolved_toml(cfg)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(config_toml)

    torch.manual_seed(cfg.seed)
    encoder = Encoder(cfg.model).to(device)
    sampled = cfg.optim.head_update == "sampled"
    moments = torch.bfloat16 if cfg.optim.head_moments == "bf16" else torch.float32
    heads = ConceptHeads(cfg.heads, encoder.dim, cfg.seed, device, sampled_update=sampled, moments=moments)
    wrapped = parallelize(encoder, cfg.parallel, world, device)
    model = nn.ModuleDict({"encoder": wrapped, "heads": heads})
    optimizer = build_optimizer(encoder, heads, cfg.optim)  # the encoder's (and dense heads') AdamW
    head_opt = SampledRowAdamW(heads, cfg.optim) if sampled else None  # its state lives in the heads' buffers
    ckpt = Checkpointer(run_dir / "checkpoints", cfg, model, optimizer)

    start, data_state = ckpt.resume()
    if start == 0 and cfg.init_from:
        kept = ckpt.init_from(cfg.init_from)
        if rank == 0:
            print(f"[train] initialised from {cfg.init_from} (encoder, heads {kept})")
    bf16 = cfg.parallel.dtype == "bf16"
    return Trainer(
        cfg=cfg,
        rank=rank,
        world=world,
        device=device,
        run_dir=run_dir,
        config_toml=config_toml,
        encoder=encoder,
        wrapped=wrapped,
        heads=heads,
        optimizers=[optimizer] + ([head_opt] if head_opt else []),
        head_opt=head_opt,
        ckpt=ckpt,
        stream=_stream(cfg, rank, world, device, data_state),
        start=start,
        autocast=torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext(),
    )


def _stream(cfg: RunConfig, rank: int, world: int, device: torch.device, data_state: dict | None) -> Stream:
    """This rank's resumable stream of packed micro-batches, labelled for the run's heads."""
    num_classes = {m: h.num_classes for h in cfg.heads for m in h.modalities}
    label_fields = {m: h.labels for h in cfg.heads for m in h.modalities}
    return Stream(
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


def _gradient_sync(wrapped: nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """Gradients are reduced across ranks only on the last micro-batch (DDP: ``no_sync``; FSDP2: a flag)."""
    if hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP2
        wrapped.set_requires_gradient_sync(last)
    ddp = isinstance(wrapped, nn.parallel.DistributedDataParallel)
    return wrapped.no_sync() if ddp and not last else contextlib.nullcontext()


def forward_backward(t: Trainer, step: int, micro: int, batch) -> tuple[torch.Tensor, dict, int, int]:
    """One micro-batch forward (under autocast) and backward: (loss, per-head losses, samples, tokens)."""
    packed = batch.packed.to(t.device)
    with _gradient_sync(t.wrapped, micro == t.cfg.accum - 1):
        with t.autocast:
            emb = t.wrapped(packed)
            loss, parts = t.heads(emb.float(), batch.modality, batch.labels, t.cfg.seed, step, micro)
        (loss / t.cfg.accum).backward()
    return loss, parts, packed.batch, packed.tokens.shape[0]


def train_step(t: Trainer, step: int) -> StepMetrics:
    """One optimizer step: ``accum`` micro-batches, clip backbone and heads apart, then AdamW if finite."""
    cfg = t.cfg
    lr = set_lr(t.optimizers, step, cfg.steps, cfg.optim)
    loss_sum, parts_sum, samples, tokens = 0.0, {}, 0, 0
    batches = []  # kept for the step's diagnosis, should its gradients be non-finite
    for micro in range(cfg.accum):
        batches.append(next(t.stream))
        loss, parts, n, length = forward_backward(t, step, micro, batches[-1])
        loss_sum += float(loss.detach()) / cfg.accum
        for k, v in parts.items():
            parts_sum[k] = parts_sum.get(k, 0.0) + float(v) / cfg.accum
        samples += n
        tokens += length
    grad_norm = clip_grads(list(t.encoder.parameters()), cfg.optim.clip)
    head_norm = (
        t.head_opt.clip(cfg.optim.clip) if t.head_opt else clip_grads(list(t.heads.parameters()), cfg.optim.clip)
    )
    if step_if_finite(t.optimizers, grad_norm, head_norm):
        t.bad_run = 0
    else:
        _skipped(t, step, grad_norm, head_norm)
        _diagnose(t, step, batches)
    return StepMetrics(lr, loss_sum, parts_sum, grad_norm, head_norm, samples, tokens)


def _skipped(t: Trainer, step: int, grad_norm: torch.Tensor, head_norm: torch.Tensor) -> None:
    """Count a step skipped for non-finite gradients; too many in a row stop the run."""
    t.bad_run, t.bad_steps = t.bad_run + 1, t.bad_steps + 1
    if t.rank == 0:
        print(
            f"[train] step {step + 1}: non-finite gradients (norm {float(grad_norm):.3g}, heads "
            f"{float(head_norm):.3g}); step skipped",
            flush=True,
        )
    if t.bad_run > t.cfg.max_bad_steps:
        raise ValueError(
            f"{t.bad_run} consecutive steps with non-finite gradients up to step {step + 1}; "
            "lower optim.lr, or train in fp32 (parallel.dtype) to find the cause"
        )


def _diagnose(t: Trainer, step: int, batches: list) -> None:
    """Run the skipped step's micro-batches again, watched, to name what made the non-finite values."""

    def rerun(micro: int) -> tuple[torch.Tensor, list[str]]:
        loss = forward_backward(t, step, micro, batches[micro])[0]
        bad = [  # the sampled heads' scored-row gradients are the optimizer's, not parameters' .grad
            f"heads.{name}.scored_rows"
            for name, head in t.heads.heads.items()
            if not finite([(g.p, g.b) for g in head.pending])
        ]
        if t.head_opt:
            t.head_opt.zero_grad()
        return loss, bad

    def describe(micro: int) -> dict:
        b = batches[micro]
        return {
            "modality": sorted(set(b.modality)),
            "samples": len(b.modality),
            "lengths": sorted(set(b.packed.lengths)),
            "max_abs_input": float(b.packed.tokens.abs().max()) if b.packed.tokens.numel() else 0.0,
        }

    modules = {"encoder": t.encoder, "heads": t.heads}
    diagnose(t.run_dir, step, modules, rerun, len(batches), describe, t.rank == 0)


def log_step(t: Trainer, step: int, m: StepMetrics, t0: float, log) -> dict:
    """The step's record (counts summed over ranks; time since ``t0``), to ``log`` and the console on rank 0."""
    counts = torch.tensor([m.samples, m.tokens], dtype=torch.float64, device=t.device)
    if t.world > 1:
        dist.all_reduce(counts)
    dt = time.perf_counter() - t0
    record = {
        "step": step + 1,
        "loss": m.loss,
        **{f"loss/{k}": v for k, v in m.parts.items()},
        "lr": m.lr,
        "grad_norm": float(m.grad_norm),
        "head_grad_norm": float(m.head_norm),
        "samples": int(counts[0]),
        "tokens": int(counts[1]),
        "step_s": dt,
        "skipped_steps": t.bad_steps,
        "samples_per_s": float(counts[0]) / dt,
    }
    if log:
        log.write(json.dumps(record) + "\n")
        log.flush()
        heads_txt = " ".join(f"{k}={v:.3f}" for k, v in m.parts.items())
        print(
            f"[train] step {step + 1}/{t.cfg.steps} loss {m.loss:.4f} ({heads_txt}) lr {m.lr:.2e} "
            f"gnorm {float(m.grad_norm):.2f} {record['samples_per_s']:.1f} samples/s",
            flush=True,
        )
    return record


def train(cfg: RunConfig) -> list[dict]:
    """Run (or resume) ``cfg``; returns the metric records logged by this process."""
    t = build(cfg)
    log = (t.run_dir / "metrics.jsonl").open("a") if t.rank == 0 else None
    records: list[dict] = []
    record: dict = {}
    try:
        for step in range(t.start, cfg.steps):
            t0 = time.perf_counter()
            metrics = train_step(t, step)
            last = step + 1 == cfg.steps
            if (step + 1) % cfg.log_every == 0 or last:
                record = log_step(t, step, metrics, t0, log)
                records.append(record)
            if (cfg.save_every and (step + 1) % cfg.save_every == 0) or last:
                t.ckpt.save(step + 1, t.stream.state, record, t.config_toml)
    finally:
        t.stream.close()
        if log:
            log.close()
    return records
