"""The codec-vs-frames experiment end to end at toy size: real clips, real curation on Ray, real training."""

import json

import manifests
from train.experimental.codec_vs_frames import ExperimentConfig, run


def test_one_command_gives_equal_budget_table_and_plot_and_reruns_from_its_outputs(tmp_path, ray_cluster, demo_corpus):
    overrides = {
        "out_dir": str(tmp_path),
        "demo_corpus": str(demo_corpus),
        "bench": {"train": 8, "test": 8, "pretrain": 8, "frames": 32},
        "pretrain": {"stage1_steps": 2, "stage2_steps": 2, "batch_size": 4, "image_classes": 4, "video_classes": 4},
        "probe": {"seeds": [0, 1], "epochs": 2, "batch": 8},
    }
    cfg = manifests.build(ExperimentConfig, overrides)
    out = run(cfg)
    work = tmp_path / cfg.name
    rows = out["rows"]
    assert len(rows) == 2 * 2 * 3 * 2 + 2  # (encoder, pixels) x tasks x budgets x modes, plus the bank comparison
    for r in rows:
        assert r["train"] == 8 and r["test"] == 8 and len(r["runs"]) == 2
        assert 0.0 <= r["ci95_seeds"][0] <= r["top1_mean"] <= r["ci95_seeds"][1] <= 1.0
    # equal budgets: codec tokens and uniform frames give the same token count per clip (8 x 8 patches a frame)
    by = {(r["encoder"], r["task"], r["mode"], r["budget"]): r for r in rows}
    for b in cfg.budgets:
        codec, frames = by[("pixels", "motion", "codec", b)], by[("pixels", "motion", "frames", b)]
        assert codec["tokens_per_clip"] == frames["tokens_per_clip"] == round(b * 32) * 64
        assert frames["frames"] == round(b * 32)
    table = (work / "table.md").read_text()
    assert table.count("| motion |") == 2 * 3 + 1 and table.count("| static |") == 2 * 3 + 1
    assert (work / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((work / "results.json").read_text())["rows"] == rows
    # every run manifest is on disk, readable and rerunnable by hand
    assert {p.name for p in (work / "manifests").glob("*.toml")} >= {"stage1.toml", "stage2-bank-stage1.toml"}

    # a rerun finds every step done: nothing is curated, trained or probed again
    stamp = (work / "train" / "stage1" / "metrics.jsonl").stat().st_mtime_ns
    again = run(cfg)
    assert again["rows"] == rows
    assert (work / "train" / "stage1" / "metrics.jsonl").stat().st_mtime_ns == stamp
