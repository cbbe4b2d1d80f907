"""``python -m train.experimental.codec_vs_frames MANIFEST``: codec tokens against uniform frames, one command.

1. generate the motion-sensitive benchmark (``python -m curate motion-bench``: path-shape task +
   static control, train/test splits) and its unlabelled pretraining clips;
2. curate the labelled clips through the pipeline once per token budget (codec tokens at the
   budget, 16 whole frames kept), and the pretraining corpus (demo photos + pretraining clips,
   with an image concept bank);
3. pretrain a small encoder: stage 1 on images, then stage 2 on images + codec-token videos whose
   concept labels come from k-means over the *stage-1 encoder's* own video embeddings; and, for
   comparison, a stage 2 whose bank came from a *randomly initialised* encoder's embeddings;
4. probe (``train.experimental.probe``) codec tokens against uniform whole frames at equal token
   budgets, for several seeds, and the two banks against each other; write ``results.json``,
   ``table.md`` and ``plot.png``.

Every step writes into ``OUT_DIR/NAME`` and is skipped when its output is already there, so a
killed run, rerun, goes on where it stopped (``--fresh`` starts over).

Curation runs through curate's command line in child processes (``python -m curate demo-corpus``,
``motion-bench``, ``run MANIFEST``, whose ``summary.json`` is read back), so the experiment depends
on curate's CLI and the shard contract, not on its modules. The one import of ``curate`` left is
``curate.concepts.kmeans`` (a spherical k-means over a few hundred clip embeddings, for the stage-2
video bank): curate has no command for k-means over arrays, and this module, fenced in
``train.experimental``, may use that public function where the trainer core may not.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import manifests
from manifests.loader import to_dict

ROOT = Path(__file__).resolve().parents[2]
TASKS = ("motion", "static")
MODES = ("codec", "frames")


@dataclass(frozen=True)
class BenchSection:
    seed: int = 0
    size: int = 128  # clip side in pixels: the codec grid is size / 16 patches a side
    frames: int = 64  # the paper's 64-frame grid
    train: int = 64  # labelled clips per task in the train split
    test: int = 48
    pretrain: int = 48  # unlabelled clips for pretraining


@dataclass(frozen=True)
class PretrainSection:
    flavour: str = "debug"
    stage1_steps: int = 150
    stage2_steps: int = 150
    batch_size: int = 16
    image_size: int = 64
    image_classes: int = 16  # concept bank of the curated photos (stage 1 labels)
    video_classes: int = 16  # concept bank of the pretraining clips (stage 2 labels)
    top_k: int = 3
    lr: float = 5e-3
    dtype: str = "fp32"  # bf16 on the GPU


@dataclass(frozen=True)
class ProbeSection:
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 15
    lr: float = 1e-3
    batch: int = 16
    compare_budget: float = 0.125  # budget of the bank comparison


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "codec-vs-frames"
    out_dir: str = "out/experiments"
    demo_corpus: str = "out/demo-corpus"  # photos for stage 1; built when missing
    executor: str = "ray"  # curation executor: ray (a local cluster) or local
    budgets: tuple[float, ...] = (0.03125, 0.125, 0.25)  # shares of the 64 x grid x grid candidates
    device: str = "auto"
    bench: BenchSection = field(default_factory=BenchSection)
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    probe: ProbeSection = field(default_factory=ProbeSection)

    def __post_init__(self):
        for b in self.budgets:
            frames = b * self.bench.frames
            if abs(frames - round(frames)) > 1e-6 or not 1 <= frames <= 16:
                raise ValueError(f"budget {b}: must be a whole number of frames (1-16) of the {self.bench.frames}")
        if self.probe.compare_budget not in self.budgets:
            raise ValueError(f"probe.compare_budget {self.probe.compare_budget} is not one of budgets {self.budgets}")


def log(msg: str) -> None:
    print(f"[experiment {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def budget_dir(work: Path, budget: float) -> Path:
    return work / "curated" / f"budget-{budget * 100:g}pct"


# ------------------------------------------------------------------------------------ curation


def _curate_cli(*args: str) -> list[str]:
    """``python -m curate ARGS`` with this interpreter; joins this process's Ray cluster when it has one."""
    cmd = [sys.executable, "-m", "curate", *args]
    ray = sys.modules.get("ray")
    if args[0] == "run" and ray is not None and ray.is_initialized():
        cmd.append(f"--address={ray.get_runtime_context().gcs_address}")
    return cmd


def _curate_env() -> dict[str, str]:
    """The child imports curate from this source tree, wherever it is started from."""
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=str(ROOT) + (os.pathsep + path if path else ""))


def _call_curate(*args: str, **popen) -> None:
    """``python -m curate ARGS`` to its end; a failure stops the experiment."""
    subprocess.run(_curate_cli(*args), env=_curate_env(), check=True, **popen)


def _curate(*runs: tuple[Path, Path]) -> list[dict]:
    """``python -m curate run`` for each (manifest, output folder), side by side; their ``summary.json``."""
    children = [subprocess.Popen(_curate_cli("run", str(manifest)), env=_curate_env()) for manifest, _ in runs]
    failed = [str(manifest) for (manifest, _), child in zip(runs, children, strict=True) if child.wait()]
    if failed:
        raise RuntimeError(f"python -m curate run failed for {', '.join(failed)}")
    return [json.loads((out / "summary.json").read_text()) for _, out in runs]


def _source(modality: str, uri: Path) -> str:
    return f'[[sources]]\nmodality = "{modality}"\nuri = "{uri}"\n'


def curate_benchmark(cfg: ExperimentConfig, work: Path) -> None:
    """The labelled clips, curated once per budget; ``labels.csv`` copied next to the shards."""
    bench = work / "bench"
    todo = []
    for budget in cfg.budgets:
        out = budget_dir(work, budget)
        if (out / "summary.json").is_file():
            continue
        keep = 16 if budget == max(cfg.budgets) else 1  # the frames mode reads whole frames from one budget only
        manifest = work / "manifests" / f"bench-{budget * 100:g}pct.toml"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(
            f'name = "bench-{budget * 100:g}pct"\npartition_size = 32\nexecutor = "{cfg.executor}"\n\n'
            f'[output]\ndir = "{out}"\nset_name = "bench"\nversion = "v1"\n\n'
            + _source("video", bench / "motion")
            + _source("video", bench / "static")
            + '\n[[stages]]\nname = "video_probe"\n\n'
            f'[[stages]]\nname = "codec_patchify"\nbudget = {budget}\nframes = {cfg.bench.frames}\n'
            f"size = {cfg.bench.size}\nkeep_frames = {keep}\n"
        )
        todo.append((budget, manifest, out))
    if not todo:
        return
    log(f"curating the benchmark at budgets {', '.join(f'{b * 100:g} %' for b, _, _ in todo)}")
    if cfg.executor == "local":  # independent runs: one process each, side by side
        summaries = _curate(*[(m, out) for _, m, out in todo])
    else:  # one after the other (each Ray run spreads over the cluster itself)
        summaries = [_curate((m, out))[0] for _, m, out in todo]
    for (_, _, out), summary in zip(todo, summaries, strict=True):
        if summary["failed"]:
            log(f"warning: {summary['failed']} clip(s) failed curation; see {out}/ledger")
        shutil.copy(bench / "labels.csv", out / "labels.csv")


def curate_pretraining(cfg: ExperimentConfig, work: Path) -> Path:
    """Demo photos (with an image concept bank) and the unlabelled clips as codec tokens."""
    out = work / "curated" / "pretrain"
    if (out / "summary.json").is_file():
        return out
    demo = Path(cfg.demo_corpus)
    if not (demo / "truth.json").is_file():
        log(f"building the demo corpus in {demo}")
        _call_curate("demo-corpus", str(demo), stdout=subprocess.DEVNULL)
    log("curating the pretraining corpus")
    manifest = work / "manifests" / "pretrain.toml"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(
        f'name = "pretrain"\npartition_size = 32\nexecutor = "{cfg.executor}"\n\n'
        f'[output]\ndir = "{out}"\nset_name = "pretrain"\nversion = "v1"\n\n'
        + _source("image", demo / "images")
        + _source("video", work / "bench" / "pretrain")
        + '\n[[stages]]\nname = "image_decode"\nsize = 256\nmode = "shorter"\n\n'
        '[[stages]]\nname = "video_probe"\n\n'
        f'[[stages]]\nname = "codec_patchify"\nbudget = 0.125\nframes = {cfg.bench.frames}\nsize = {cfg.bench.size}\n'
        "keep_frames = 1\n\n"  # stage 2 reads codec tokens only
        '[[stages]]\nname = "embed"\nmodel = "ViT-S-32"\nimage_size = 64\nweights = "random"\nallow_random = true\n'
        'modalities = ["image"]\n\n'
        f'[[stages]]\nname = "concepts"\nmodalities = ["image"]\nk = {cfg.pretrain.image_classes}\n'
        f'top_k = {cfg.pretrain.top_k}\nbank_name = "pretrain-image"\n'
    )
    _curate((manifest, out))
    return out


# ------------------------------------------------------------------------------------ pretraining


def _run_manifest(
    cfg: ExperimentConfig,
    work: Path,
    name: str,
    steps: int,
    shards: list[str],
    heads: dict[str, int],
    init_from: str = "",
) -> Path:
    """A run manifest on top of manifests/runs/debug.toml, written where users can read and rerun it."""
    p = cfg.pretrain
    text = (
        f'base = "{ROOT / "manifests" / "runs" / "debug.toml"}"\nname = "{name}"\nout_dir = "{work / "train"}"\n'
        f'steps = {steps}\nsave_every = 0\nlog_every = 10\ninit_from = "{init_from}"\n\n'
        f'[model]\nflavour = "{p.flavour}"\n\n'
        f"[data]\nshards = {json.dumps(shards)}\nresample = true\nworkers = 2\nbatch_size = {p.batch_size}\n"
        f"image_size = {p.image_size}\n"
        f"resolution_schedule = []\nvideo_size = {cfg.bench.size}\ncodec_share = 1.0\n\n"
        f"[optim]\nlr = {p.lr}\nwarmup_steps = {max(1, steps // 20)}\n\n"
        f'[parallel]\ndtype = "{p.dtype}"\n'
    )
    for head, classes in heads.items():
        text += f'\n[[heads]]\nname = "{head}"\nmodalities = ["{head}"]\nnum_classes = {classes}\nsample_rate = 1.0\n'
    path = work / "manifests" / f"{name}.toml"
    path.write_text(text)
    return path


def _train(manifest: Path) -> Path:
    from train.checkpoint import latest
    from train.config import RunConfig
    from train.loop import train

    run = manifests.load(RunConfig, str(manifest))
    folder = Path(run.out_dir) / run.name
    done = latest(folder / "checkpoints")
    if done is not None and done.name == f"step_{run.steps:08d}":
        return folder
    log(f"training {run.name} ({run.steps} steps)")
    train(run)
    return folder


def video_bank_shards(encoder, pretrain: Path, out: Path, classes: int, top_k: int, seed: int, device: str) -> Path:
    """Label the pretraining clips by k-means over ``encoder``'s embeddings of their codec tokens.

    ``curate.concepts.kmeans`` is this experiment's one import of curate (see the module docstring)."""
    import torch

    from curate.concepts.kmeans import kmeans, nearest
    from shards.format import encode_npy
    from shards.publish import ShardSetWriter
    from shards.reader import iter_samples
    from train.inputs import codec_input
    from train.packing import pack

    if (out / "bank.json").is_file():
        return out
    tars = sorted((pretrain / "shards" / "video").glob("*.tar"))
    samples = [s for tar in tars for s, _, _ in iter_samples(str(tar)) if "pos.npy" in s]
    if len(samples) < classes:
        raise ValueError(f"{pretrain}: {len(samples)} curated clips for a {classes}-concept video bank")
    encoder = encoder.to(device).eval()
    emb = []
    with torch.no_grad():
        for i in range(0, len(samples), 16):
            chunk = [codec_input(s, encoder.cfg.patch) for s in samples[i : i + 16]]
            emb.append(torch.nn.functional.normalize(encoder(pack(chunk).to(device)).float(), dim=-1).cpu())
    x = torch.cat(emb).numpy()
    result = kmeans(x, classes, iters=25, seed=seed, init="kmeans++", spherical=True, device="cpu")
    labels = nearest(x, result.centroids, k=top_k, device="cpu")
    out.mkdir(parents=True, exist_ok=True)
    writer = ShardSetWriter(str(out), "video_bank", "v1", max_samples=32, extra={"modality": "video"}, overwrite=True)
    for s, lab in zip(samples, labels, strict=True):
        clean = {k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"}
        writer.write(dict(clean, **{"cls.npy": encode_npy(lab.astype(np.int32))}))
    writer.close()
    counts = np.bincount(labels[:, 0], minlength=classes)
    (out / "bank.json").write_text(
        json.dumps(
            {
                "clips": len(samples),
                "classes": classes,
                "top1_counts": counts.tolist(),
                "objective": result.objective[-1],
            }
        )
    )
    return out


def pretrain(cfg: ExperimentConfig, work: Path, corpus: Path) -> dict[str, Path]:
    """Stage 1, then stage 2 twice: video bank from the stage-1 encoder or from an untrained one."""
    import torch

    from train.config import ModelConfig
    from train.model import Encoder
    from train.release import load_encoder

    p = cfg.pretrain
    images = str(corpus / "shards" / "image")
    stage1 = _train(_run_manifest(cfg, work, "stage1", p.stage1_steps, [images], {"image": p.image_classes}))
    torch.manual_seed(cfg.bench.seed + 1)
    banks = {
        "stage1": load_encoder(stage1),
        "random": Encoder(ModelConfig(flavour=p.flavour)),
    }
    init = str(sorted((stage1 / "checkpoints").glob("step_*"))[-1])
    runs = {}
    for bank, encoder in banks.items():
        folder = work / "banks" / f"video-from-{bank}-encoder"
        video_bank_shards(encoder, corpus, folder, p.video_classes, p.top_k, cfg.bench.seed, _device(cfg))
        heads = {"image": p.image_classes, "video": p.video_classes}
        manifest = _run_manifest(
            cfg, work, f"stage2-bank-{bank}", p.stage2_steps, [images, str(folder)], heads, init_from=init
        )
        runs[f"stage2-bank-{bank}"] = _train(manifest)
    return {"stage1": stage1, **runs}


# ------------------------------------------------------------------------------------ probing


def _device(cfg: ExperimentConfig) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device


def probe_all(cfg: ExperimentConfig, work: Path, runs: dict[str, Path]) -> list[dict]:
    """Every (encoder, task, mode, budget) cell, features once per cell, probes per seed."""
    from train.experimental.probe import PixelReference, extract, probe_features, read_dataset
    from train.release import load_encoder

    cache = work / "probe-results.jsonl"
    done = {}
    if cache.is_file():
        for line in cache.read_text().splitlines():
            r = json.loads(line)
            done[(r["encoder"], r["task"], r["mode"], r["budget"])] = r
    cells = [(e, t, m, b) for e in ("bank-stage1", "pixels") for t in TASKS for b in cfg.budgets for m in MODES]
    cells += [("bank-random", t, "codec", cfg.probe.compare_budget) for t in TASKS]
    device = _device(cfg)
    fit = {"epochs": cfg.probe.epochs, "lr": cfg.probe.lr, "batch": cfg.probe.batch, "device": device}
    rows, encoders, datasets = [], {}, {}
    for name, task, mode, budget in cells:
        if (name, task, mode, budget) in done:
            rows.append(done[(name, task, mode, budget)])
            continue
        if name not in encoders:
            encoders[name] = PixelReference() if name == "pixels" else load_encoder(runs[f"stage2-{name}"])
        data = budget_dir(work, budget if mode == "codec" else max(cfg.budgets))
        if (data, task) not in datasets:
            datasets[(data, task)] = read_dataset(data, task=task)
        encoder, items = encoders[name], datasets[(data, task)]
        frames = round(budget * cfg.bench.frames)
        log(f"probing {name} {task} {mode} at {budget * 100:g} % ({len(items)} clips)")
        feats, tokens = extract(encoder, items, mode, frames, cfg.bench.size, device=device)
        result = probe_features(feats, items, list(cfg.probe.seeds), **fit)
        row = {
            "encoder": name,
            "task": task,
            "mode": mode,
            "budget": budget,
            "frames": frames if mode == "frames" else None,
            "tokens_per_clip": tokens,
            **result,
        }
        with cache.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------ report


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def table(rows: list[dict], cfg: ExperimentConfig) -> str:
    seeds = ", ".join(str(s) for s in cfg.probe.seeds)
    lines = [
        f"Top-1 % on the test split (mean over probe seeds {seeds}; 95 % t interval over seeds in brackets). "
        f"Benchmark seed {cfg.bench.seed}, {cfg.bench.size} px, {cfg.bench.frames} frames, "
        f"{cfg.bench.train} train / {cfg.bench.test} test clips per task, 4 classes (chance 25 %).",
    ]
    by = {(r["encoder"], r["task"], r["mode"], r["budget"]): r for r in rows}
    titles = {
        "bank-stage1": f"Pretrained encoder ({cfg.pretrain.flavour}, stage 1 then stage 2), frozen:",
        "pixels": "Encoder-free reference (patch thumbnails + (t, h, w) positions): what the tokens carry:",
    }
    for encoder, title in titles.items():
        lines += [
            "",
            title,
            "",
            "| task | budget | tokens / clip | codec tokens | uniform frames (n) | codec - frames |",
            "|---|---|---|---|---|---|",
        ]
        for task in TASKS:
            for b in cfg.budgets:
                c, f = by[(encoder, task, "codec", b)], by[(encoder, task, "frames", b)]
                diff = c["top1_mean"] - f["top1_mean"]
                lines.append(
                    f"| {task} | {b * 100:.1f} % | {c['tokens_per_clip']} | {_pct(c['top1_mean'])} "
                    f"[{_pct(c['ci95_seeds'][0])}, {_pct(c['ci95_seeds'][1])}] | {_pct(f['top1_mean'])} "
                    f"[{_pct(f['ci95_seeds'][0])}, {_pct(f['ci95_seeds'][1])}] ({f['frames']}) | {100 * diff:+.1f} |"
                )
    b = cfg.probe.compare_budget
    lines += [
        "",
        f"Stage-2 video concept bank, codec tokens at {b * 100:.1f} %:",
        "",
        "| task | bank from stage-1 encoder | bank from untrained encoder |",
        "|---|---|---|",
    ]
    for task in TASKS:
        a, r = by[("bank-stage1", task, "codec", b)], by[("bank-random", task, "codec", b)]
        lines.append(
            f"| {task} | {_pct(a['top1_mean'])} [{_pct(a['ci95_seeds'][0])}, {_pct(a['ci95_seeds'][1])}] | "
            f"{_pct(r['top1_mean'])} [{_pct(r['ci95_seeds'][0])}, {_pct(r['ci95_seeds'][1])}] |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], cfg: ExperimentConfig, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(r["encoder"], r["task"], r["mode"], r["budget"]): r for r in rows}
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    xs = [b * 100 for b in cfg.budgets]
    for ax, task in zip(axes[:2], TASKS, strict=True):
        for (encoder, style), (mode, colour) in itertools.product(
            (("bank-stage1", "-"), ("pixels", "--")), (("codec", "tab:red"), ("frames", "tab:blue"))
        ):
            cells = [by[(encoder, task, mode, b)] for b in cfg.budgets]
            mean = [100 * c["top1_mean"] for c in cells]
            err = np.array(
                [
                    [100 * (c["top1_mean"] - c["ci95_seeds"][0]), 100 * (c["ci95_seeds"][1] - c["top1_mean"])]
                    for c in cells
                ]
            ).T
            label = ("codec tokens" if mode == "codec" else "uniform whole frames") + (
                ", encoder" if encoder == "bank-stage1" else ", pixels + positions (no encoder)"
            )
            ax.errorbar(xs, mean, yerr=err, marker="o", capsize=4, color=colour, ls=style, label=label)
        ax.axhline(100 * cells[0]["chance"], color="grey", ls=":", label="chance")
        ax.set(
            title=f"{task} task",
            xlabel="token budget (% of the 64-frame grid)",
            ylabel="test top-1 (%)",
            xscale="log",
            ylim=(0, 100),
        )
        ax.set_xticks(xs, [f"{x:.1f}".rstrip("0").rstrip(".") for x in xs])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.legend(fontsize=8)
    b = cfg.probe.compare_budget
    ax = axes[2]
    for i, (name, colour) in enumerate((("bank-stage1", "tab:green"), ("bank-random", "tab:grey"))):
        vals = [by[(name, t, "codec", b)] for t in TASKS]
        mean = [100 * v["top1_mean"] for v in vals]
        err = np.array(
            [[100 * (v["top1_mean"] - v["ci95_seeds"][0]), 100 * (v["ci95_seeds"][1] - v["top1_mean"])] for v in vals]
        ).T
        label = "bank from stage-1 encoder" if name == "bank-stage1" else "bank from untrained encoder"
        ax.bar(np.arange(len(TASKS)) + 0.38 * i, mean, 0.36, yerr=err, capsize=4, color=colour, label=label)
    ax.set(
        title=f"stage-2 bank source (codec, {b * 100:g} %)",
        xticks=np.arange(len(TASKS)) + 0.19,
        xticklabels=list(TASKS),
        ylabel="test top-1 (%)",
        ylim=(0, 100),
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------ main


def run(cfg: ExperimentConfig, fresh: bool = False) -> dict:
    work = Path(cfg.out_dir) / cfg.name
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "experiment.toml").write_text(manifests.resolved_toml(cfg))
    t0 = time.perf_counter()
    if not (work / "bench" / "labels.csv").is_file():
        b = cfg.bench
        log(f"generating the benchmark ({b.train}+{b.test} clips per task, {b.pretrain} pretraining clips)")
        sizes = {"seed": b.seed, "size": b.size, "frames": b.frames, "train": b.train, "test": b.test}
        flags = [f"--{k}={v}" for k, v in {**sizes, "pretrain": b.pretrain}.items()]
        _call_curate("motion-bench", str(work / "bench"), *flags, "--quiet", stdout=subprocess.DEVNULL)
    curate_benchmark(cfg, work)
    corpus = curate_pretraining(cfg, work)
    runs = pretrain(cfg, work, corpus)
    rows = probe_all(cfg, work, runs)
    out = {"config": to_dict(cfg), "minutes": round((time.perf_counter() - t0) / 60, 2), "rows": rows}
    (work / "results.json").write_text(json.dumps(out, indent=1))
    (work / "table.md").write_text(table(rows, cfg))
    plot(rows, cfg, work / "plot.png")
    log(f"done in {out['minutes']} min: {work / 'table.md'}, {work / 'plot.png'}")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print(
            "\nusage: python -m train.experimental.codec_vs_frames MANIFEST [--fresh] [--key=value ...]"
            "\n  e.g. python -m train.experimental.codec_vs_frames manifests/experiments/codec_vs_frames.toml"
        )
        return 0 if argv else 2
    fresh = "--fresh" in argv
    rest = [a for a in argv[1:] if a != "--fresh"]
    try:
        cfg = manifests.load(ExperimentConfig, argv[0], manifests.parse_overrides(rest))
    except manifests.ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run(cfg, fresh)
    print((Path(cfg.out_dir) / cfg.name / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
