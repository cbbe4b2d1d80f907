"""The native release: ``model.safetensors``, ``config.json``, a model card and the run's manifest.

Writes the encoder only (the concept heads are training machinery), its architecture and
preprocessing, and a card listing the data manifests, concept-bank versions and final metrics.
``load_release(OUT_DIR)`` rebuilds the encoder in any process; its embeddings equal the
checkpoint's bit for bit. This module needs neither transformers nor ONNX: the ``hf`` and ``onnx``
formats build on it, never the other way, and ``python -m train.release`` (``__main__``) picks one.
"""

from __future__ import annotations

import json
import tomllib
import warnings
from pathlib import Path, PurePosixPath

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file

from shards.index import ShardSetError, read_index
from train.checkpoint import latest, read_meta
from train.config import ModelConfig
from train.model import Encoder
from train.packing import CLIP_MEAN, CLIP_STD

CARD = """---
license: apache-2.0
library_name: {library}
pipeline_tag: image-feature-extraction
tags:
- ovforge
- vision
- video
- codec-tokens
- feature-extraction
datasets:
{sets}
---

# ovforge encoder `{name}` ({flavour})

A {flavour} ViT (width {dim}, depth {depth}, {heads} heads, patch {patch}) with 3D-RoPE over
(t, h, w) token positions and a PMA pooling head, pretrained by partial-FC cluster
discrimination. {params:.1f} M parameters; step {step}; source git revision `{revision}`.

## Data manifests

{shards}

## Concept banks (heads)

| head | classes | bank | bank version |
|---|---|---|---|
{banks}

{record}
## Final metrics

```json
{metrics}
```

## Loading

```python
import torch
from train.release import load_release
from train.packing import normalise, pack, patchify

model = load_release("path/to/this/folder").eval()
image = torch.randint(0, 256, (3, 224, 224), dtype=torch.uint8)   # your RGB image, side divisible by {patch}
with torch.no_grad():
    embedding = model(pack([patchify(normalise(image), {patch})]))   # (1, {dim})
```

Videos: pass codec tokens (patches at their (t, h, w)) or frames with t set per frame; several
samples of any lengths go through one call packed (`pack([...])`).
"""


def export(checkpoint: str | Path, out_dir: str | Path, library: str = "ovforge", probe: str | None = None) -> Path:
    """The native release of ``checkpoint`` in ``out_dir``; ``library`` is the card's ``library_name``;
    ``probe``: a probe's results (``train.experimental.probe --out``) to show in the card."""
    folder, out = Path(checkpoint), Path(out_dir)
    encoder, meta = checkpoint_encoder(folder)
    weights = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt", "step": str(meta["step"])})
    config = {
        "architecture": "ovforge-vit-rope3d-pma",
        "flavour": meta["flavour"],
        "patch": meta["patch"],
        "rope_theta": meta["rope_theta"],
        "dims": {"width": meta["dims"][0], "depth": meta["dims"][1], "heads": meta["dims"][2], "mlp": meta["dims"][3]},
        "embedding_dim": meta["dims"][0],
        "preprocess": {"mean": CLIP_MEAN, "std": CLIP_STD, "rope_split_thw": [4, 6, 6]},
        "step": meta["step"],
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    run_text = (folder / "config.toml").read_text() if (folder / "config.toml").is_file() else ""
    run = tomllib.loads(run_text) if run_text else {}
    revision = run_text.splitlines()[0].removeprefix("# git revision: ") if run_text else "unknown"
    shards = run.get("data", {}).get("shards", [])
    banks = "\n".join(
        f"| {n} | {h['num_classes']} | {h['bank'] or '(random init)'} | {h['bank_version'] or '-'} |"
        for n, h in meta["heads"].items()
    )
    dim, depth, heads, _ = meta["dims"]
    names = [set_name(s) for s in shards]
    card = CARD.format(
        library=library,
        sets="\n".join(f"- {n}" for n in names) or "[]",
        name=run.get("name", folder.parent.parent.name),
        flavour=meta["flavour"],
        dim=dim,
        depth=depth,
        heads=heads,
        patch=meta["patch"],
        params=sum(v.numel() for v in weights.values()) / 1e6,
        step=meta["step"],
        revision=revision,
        shards="\n".join(f"- `{n}`" for n in names) or "- (none recorded)",
        banks=banks,
        metrics=json.dumps(meta.get("metrics", {}), indent=1),
        record=loss_curve(folder.parent.parent / "metrics.jsonl", meta["step"], out) + probe_table(probe),
    )
    (out / "README.md").write_text(card)
    if run_text:
        (out / "train_config.toml").write_text(run_text)
    return out


def loss_curve(metrics: Path, step: int, out: Path) -> str:
    """The card's training-loss section: ``loss.png`` (total and per head, up to the released step) from
    the run's ``metrics.jsonl``; nothing when the run's log is not beside its checkpoints."""
    if not metrics.is_file():
        return ""
    records = [r for r in map(json.loads, metrics.read_text().splitlines()) if r["step"] <= step and "loss" in r]
    if not records:
        return ""
    from matplotlib.figure import Figure  # here: a release without a log never loads matplotlib

    fig = Figure(figsize=(6, 3))
    ax = fig.subplots()
    for name in ["loss"] + sorted({k for r in records for k in r if k.startswith("loss/")}):
        points = [(r["step"], r[name]) for r in records if name in r]
        ax.plot(*zip(*points, strict=True), label=name, linewidth=1.2 if name == "loss" else 0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8)
    fig.savefig(out / "loss.png", dpi=100, bbox_inches="tight")
    first, last = records[0], records[-1]
    return (
        f"## Training loss\n\n![training loss](loss.png)\n\nLoss {first['loss']:.4f} at step {first['step']}, "
        f"{last['loss']:.4f} at step {last['step']} ({len(records)} logged steps).\n\n"
    )


def probe_table(path: str | None) -> str:
    """The card's evaluation section from a probe's results JSON (top-1 over seeds, its interval, chance)."""
    if path is None:
        return ""
    result = json.loads(Path(path).read_text())
    lo, hi = result["ci95_seeds"]
    return (
        "## Evaluation\n\n| probe | top-1 (mean over seeds) | 95 % interval over seeds | chance | seeds | tokens per sample |\n"
        "|---|---|---|---|---|---|\n"
        f"| {result['mode']} | {100 * result['top1_mean']:.1f} % | [{100 * lo:.1f}, {100 * hi:.1f}] % | "
        f"{100 * result['chance']:.1f} % | {len(result['runs'])} | {result['tokens_per_sample']} |\n\n"
    )


def set_name(path: str) -> str:
    """A training shard set as the card names it, never by a local path: an ``s3://`` URI as is, a
    local set by its index's name (``demo_image``), else by its folder's name."""
    if path.startswith("s3://"):
        return path
    try:
        return read_index(path)["set"]
    except ShardSetError:  # the set has moved since training
        return PurePosixPath(path.replace("\\", "/").rstrip("/")).name


def checkpoint_encoder(folder: str | Path) -> tuple[Encoder, dict]:
    """The encoder weights of one training checkpoint (in one process, whatever the run's world size)."""
    folder = Path(folder)
    meta = read_meta(folder)
    encoder = Encoder(ModelConfig(flavour=meta["flavour"], patch=meta["patch"], rope_theta=meta["rope_theta"]))
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    with warnings.catch_warnings():  # a release is made in one process on purpose
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load({"model": state}, checkpoint_id=str(folder), no_dist=not torch.distributed.is_initialized())
    encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items()})
    return encoder, meta


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> Encoder:
    """A release folder, a checkpoint folder, or a run folder (its latest checkpoint) -> the encoder."""
    path = Path(path)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return load_release(path, device)
    if (path / "meta.json").is_file():
        return checkpoint_encoder(path)[0].to(device)
    found = latest(path / "checkpoints") if (path / "checkpoints").is_dir() else None
    if found is None:
        raise FileNotFoundError(
            f"{path}: not a release (config.json + model.safetensors), a checkpoint (meta.json) "
            "or a run folder with checkpoints/step_*"
        )
    return checkpoint_encoder(found)[0].to(device)


def load_release(folder: str | Path, device: str | torch.device = "cpu") -> Encoder:
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    encoder = Encoder(ModelConfig(flavour=config["flavour"], patch=config["patch"], rope_theta=config["rope_theta"]))
    encoder.load_state_dict(load_file(str(folder / "model.safetensors"), device=str(device)), strict=True)
    return encoder.to(device)
