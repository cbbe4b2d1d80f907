"""``python -m train.experimental.probe RUN_OR_RELEASE DATASET``: attentive probing of a frozen encoder.

The reference protocol (onevision-encoder.md section 7.1): the encoder is frozen and every token
it outputs is kept; a probe of one cross-attention pooling block (a learned query over the
RMS-normed tokens, then an MLP, heads = width / 64) plus LayerNorm and a linear classifier is
trained with AdamW (no weight decay), a linear learning-rate decay, label smoothing 0.1 and grad
clipping 5. Differences, on purpose: the reported number is the *last* epoch's top-1 on a held-out
test split (the reference reports the best epoch on its validation split), with a Wilson 95 %
interval per seed and a t interval over seeds; features are computed once, so no augmentation.

DATASET is a curated set (a pipeline output folder, or any folder of shards) plus a
``labels.csv`` with columns ``name,split,label`` (and optionally ``task``): ``name`` is the source
file name of each sample (its json's ``source``), ``split`` is ``train`` or ``test``.

Input modes: ``codec`` (the sample's codec tokens, at the budget it was curated with), ``frames``
(N uniformly spaced whole frames of the stored frames, each at its own t), ``spatial`` (an image,
or a video's middle stored frame, at t = 0).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from shards.reader import iter_samples
from train.inputs import image_input, video_tokens
from train.packing import pack
from train.release import load_encoder

MODES = ("codec", "frames", "spatial")


@dataclass
class Item:
    name: str
    split: str
    label: int
    sample: dict


# ------------------------------------------------------------------------------------------- data


def read_labels(path: str | Path, task: str | None = None) -> dict[str, tuple[str, int]]:
    """``labels.csv`` -> {file name: (split, label)}; clear errors for a malformed file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no labels file; a probe dataset needs labels.csv (name,split,label)")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    missing = {"name", "split", "label"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{path}: columns {sorted(missing)} missing (need name, split, label)")
    out = {}
    for row in rows:
        if task and row.get("task") != task:
            continue
        label = int(row["label"])
        if label < 0 or row["split"] not in ("train", "test"):
            continue  # unlabelled rows (pretraining clips) take no part in probing
        out[row["name"]] = (row["split"], label)
    if not out:
        raise ValueError(f"{path}: no labelled train/test rows" + (f" for task {task!r}" if task else ""))
    return out


def read_dataset(folder: str | Path, labels: str | Path | None = None, task: str | None = None) -> list[Item]:
    """Every shard sample under ``folder`` whose source file has a label."""
    folder = Path(folder)
    table = read_labels(labels or folder / "labels.csv", task)
    tars = sorted(folder.rglob("*.tar"))
    if not tars:
        raise FileNotFoundError(f"{folder}: no shards (*.tar) found")
    items = []
    for tar in tars:
        for sample, _, _ in iter_samples(str(tar)):
            meta = json.loads(sample["json"])
            name = Path(meta.get("source", "")).name
            if name in table:
                split, label = table[name]
                items.append(Item(name, split, label, sample))
    found = {i.name for i in items}
    if not found:
        raise ValueError(f"{folder}: none of the shard samples' source files appear in the labels")
    lost = len(table) - len(found)
    if lost:
        print(f"[probe] note: {lost} labelled file(s) have no sample in the shards (dropped or failed in curation)")
    return items


def tokens_of(sample: dict, mode: str, frames: int, size: int, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample -> (patches, positions) in the given input mode."""
    meta = json.loads(sample["json"])
    if "jpg" in sample:  # images and OCR pages: the whole image in every mode
        return image_input(sample["jpg"], size, patch)
    if mode == "codec" and "pos.npy" not in sample:
        raise ValueError(f"sample {sample.get('__key__')}: no codec tokens (was it curated by codec_patchify?)")
    stored = len(meta.get("frames", {}).get("ids", [])) or 1
    if mode == "frames" and frames > stored:
        raise ValueError(f"sample {sample.get('__key__')}: {frames} frames asked, {stored} stored (keep_frames)")
    return video_tokens(sample, meta, mode, stored if mode == "spatial" else frames, size, patch)


@torch.no_grad()
def extract(
    encoder,
    items: list[Item],
    mode: str,
    frames: int = 8,
    size: int = 224,
    batch: int = 8,
    device: str | torch.device = "cpu",
) -> tuple[list[torch.Tensor], int]:
    """Frozen per-token features (fp16, one tensor per item) and the token count per item."""
    device = torch.device(device)
    encoder = encoder.to(device).eval()
    patch = encoder.cfg.patch
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )
    feats, counts = [], []
    for i in tqdm(range(0, len(items), batch), desc=f"features ({mode})", unit="batch", leave=False):
        chunk = [tokens_of(it.sample, mode, frames, size, patch) for it in items[i : i + batch]]
        packed = pack(chunk).to(device)
        with autocast:
            out = encoder.forward_features(packed)
        feats += [f.half().cpu() for f in out.float().split(list(packed.lengths))]
        counts += list(packed.lengths)
    return feats, int(np.median(counts)) if counts else 0


class PixelReference(nn.Module):
    """An encoder-free reference: what the token *selection* alone lets a probe see.

    Each token becomes its patch's 4x4 colour thumbnail plus random Fourier features of its joint
    (t, h, w) position, so the probe's attention can pick tokens by colour and average where and
    when they are. Probing it separates the two questions of the experiment: do the selected
    tokens carry the class, and does a trained encoder make it readable.
    """

    def __init__(self, patch: int = 16, thumb: int = 4, position_features: int = 80, seed: int = 0):
        super().__init__()
        from types import SimpleNamespace

        self.cfg = SimpleNamespace(patch=patch)
        self.thumb = thumb
        gen = torch.Generator().manual_seed(seed)
        # positions are scaled to about [0, 1] (t / 64, h / 16, w / 16); frequencies up to ~ 3 cycles
        self.register_buffer("freqs", torch.randn(3, position_features, generator=gen) * 2 * math.pi * 1.5)
        self.register_buffer("phase", torch.rand(position_features, generator=gen) * 2 * math.pi)

    def forward_features(self, packed) -> torch.Tensor:
        n = packed.tokens.shape[0]
        p = self.cfg.patch
        pixels = nn.functional.adaptive_avg_pool2d(packed.tokens.float().view(n, 3, p, p), self.thumb).reshape(n, -1)
        pos = packed.pos.float() / torch.tensor([64.0, 16.0, 16.0], device=packed.pos.device)
        where = torch.cos(pos @ self.freqs + self.phase) * math.sqrt(2.0)
        return torch.cat([pixels, where], dim=1)


# ------------------------------------------------------------------------------------------ probe


class AttentiveProbe(nn.Module):
    """A learned query attends over all tokens (PMA), then MLP, LayerNorm and a linear classifier."""

    def __init__(self, dim: int, classes: int, heads: int | None = None):
        super().__init__()
        heads = heads or max(1, dim // 64)
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm_kv = nn.RMSNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_mlp = nn.RMSNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.query, std=0.02)
        with torch.no_grad():
            self.fc.weight.mul_(1e-3)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """x (B, L, D) padded token features, pad (B, L) True where padding -> logits (B, classes)."""
        kv = self.norm_kv(x)
        h = self.attn(self.query.expand(x.shape[0], -1, -1), kv, kv, key_padding_mask=pad, need_weights=False)[0]
        h = h + self.mlp(self.norm_mlp(h))
        return self.fc(self.norm(h[:, 0]))


def _padded(feats: list[torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(f.shape[0] for f in feats)
    x = torch.zeros(len(feats), n, feats[0].shape[1], device=device)
    pad = torch.ones(len(feats), n, dtype=torch.bool, device=device)
    for i, f in enumerate(feats):
        x[i, : f.shape[0]] = f.to(device, torch.float32)
        pad[i, : f.shape[0]] = False
    return x, pad


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (sensible at small n and near 0 or 1)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def seed_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean over seeds and its t interval, clipped to [0, 1] (the seeds' spread; 0 width with one seed)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), float(v.mean()), float(v.mean())
    half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean()), max(0.0, float(v.mean() - half)), min(1.0, float(v.mean() + half))  # accuracies


def fit_probe(
    train_x: list[torch.Tensor],
    train_y: list[int],
    test_x: list[torch.Tensor],
    test_y: list[int],
    classes: int,
    seed: int = 0,
    epochs: int = 10,
    lr: float = 1e-3,
    batch: int = 16,
    device: str | torch.device = "cpu",
) -> dict:
    """Train one probe on frozen features; the last epoch's test top-1 with its Wilson interval."""
    device = torch.device(device)
    torch.manual_seed(seed)
    probe = AttentiveProbe(train_x[0].shape[1], classes).to(device)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.999))
    steps = epochs * math.ceil(len(train_x) / batch)
    sched = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 1e-7 / lr, total_iters=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    gen = torch.Generator().manual_seed(seed)
    ty = torch.tensor(train_y)
    curve = []
    for _ in range(epochs):
        probe.train()
        order = torch.randperm(len(train_x), generator=gen).tolist()
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            x, pad = _padded([train_x[j] for j in idx], device)
            loss = loss_fn(probe(x, pad), ty[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(probe.parameters(), 5.0)
            opt.step()
            sched.step()
        curve.append(evaluate(probe, test_x, test_y, batch, device))
    correct = round(curve[-1] * len(test_y))
    lo, hi = wilson(correct, len(test_y))
    return {"seed": seed, "top1": curve[-1], "correct": correct, "n": len(test_y), "ci95": [lo, hi], "curve": curve}


@torch.no_grad()
def evaluate(probe: AttentiveProbe, xs: list[torch.Tensor], ys: list[int], batch: int, device) -> float:
    probe.eval()
    hits = 0
    for i in range(0, len(xs), batch):
        x, pad = _padded(xs[i : i + batch], device)
        hits += int((probe(x, pad).argmax(1).cpu() == torch.tensor(ys[i : i + batch])).sum())
    return hits / max(1, len(ys))


def probe_features(feats: list[torch.Tensor], items: list[Item], seeds: list[int], **fit) -> dict:
    """Probe already-extracted features over several seeds -> per-seed results and their summary."""
    classes = max(i.label for i in items) + 1
    tr = [k for k, i in enumerate(items) if i.split == "train"]
    te = [k for k, i in enumerate(items) if i.split == "test"]
    if not tr or not te:
        raise ValueError(f"probing needs train and test samples, got {len(tr)} train and {len(te)} test")
    runs = [
        fit_probe(
            [feats[k] for k in tr],
            [items[k].label for k in tr],
            [feats[k] for k in te],
            [items[k].label for k in te],
            classes,
            seed=s,
            **fit,
        )
        for s in seeds
    ]
    mean, lo, hi = seed_interval([r["top1"] for r in runs])
    return {
        "top1_mean": mean,
        "ci95_seeds": [lo, hi],
        "classes": classes,
        "train": len(tr),
        "test": len(te),
        "chance": 1 / classes,
        "runs": runs,
    }


def run_probe(
    encoder_path: str,
    dataset: str,
    mode: str = "codec",
    frames: int = 8,
    size: int = 224,
    labels: str | None = None,
    task: str | None = None,
    seeds: tuple[int, ...] = (0, 1, 2),
    device: str = "auto",
    **fit,
) -> dict:
    """Load, read, extract once, probe per seed."""
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    encoder = PixelReference() if encoder_path == "pixels" else load_encoder(encoder_path)
    items = read_dataset(dataset, labels, task)
    feats, tokens = extract(encoder, items, mode, frames, size, device=dev)
    result = probe_features(feats, items, list(seeds), device=dev, **fit)
    return {
        "encoder": str(encoder_path),
        "dataset": str(dataset),
        "task": task,
        "mode": mode,
        "frames": frames if mode == "frames" else None,
        "tokens_per_sample": tokens,
        **result,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.experimental.probe",
        description="Attentive probe of a frozen encoder: top-1 with 95 %% intervals (see the module docstring).",
    )
    parser.add_argument(
        "encoder",
        help="release folder, checkpoint folder or run folder (latest checkpoint); "
        "'pixels': the encoder-free reference (patch thumbnails + positions)",
    )
    parser.add_argument("dataset", help="folder of curated shards with labels.csv (name,split,label[,task])")
    parser.add_argument("--mode", choices=MODES, default="codec", help="input mode (default codec)")
    parser.add_argument("--frames", type=int, default=8, help="frames mode: whole frames per clip (default 8)")
    parser.add_argument("--size", type=int, default=224, help="side of images and whole frames (default 224)")
    parser.add_argument("--labels", help="labels CSV (default DATASET/labels.csv)")
    parser.add_argument("--task", help="only rows of labels.csv with this task")
    parser.add_argument("--seeds", default="0,1,2", help="probe seeds, comma-separated (default 0,1,2)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        seeds = tuple(int(s) for s in args.seeds.split(","))
        result = run_probe(
            args.encoder,
            args.dataset,
            args.mode,
            args.frames,
            args.size,
            args.labels,
            args.task,
            seeds,
            args.device,
            epochs=args.epochs,
            lr=args.lr,
            batch=args.batch,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in result["runs"]:
        print(
            f"seed {r['seed']}: top-1 {100 * r['top1']:.1f} % ({r['correct']}/{r['n']}), "
            f"Wilson 95 % [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}]"
        )
    lo, hi = result["ci95_seeds"]
    print(
        f"{result['mode']}: top-1 {100 * result['top1_mean']:.1f} % over {len(seeds)} seed(s), 95 % "
        f"[{100 * lo:.1f}, {100 * hi:.1f}]; chance {100 * result['chance']:.1f} %; "
        f"{result['tokens_per_sample']} tokens per sample"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
