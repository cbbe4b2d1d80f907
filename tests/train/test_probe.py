"""Attentive probe: interval arithmetic, a probe that must learn a known rule, input modes, the CLI."""

import csv
import json

import numpy as np
import pytest
import torch
import webdataset as wds
from trainkit import base_config, image_sample, video_sample, write_shards

import manifests
from shards.format import encode_json
from train.config import RunConfig
from train.experimental.probe import AttentiveProbe, fit_probe, main, read_dataset, seed_interval, tokens_of, wilson
from train.loop import train


def test_wilson_interval_matches_known_values():
    lo, hi = wilson(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and round(hi, 4) == 0.2775
    assert wilson(10, 10)[1] == 1.0
    mean, lo, hi = seed_interval([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6) and lo == pytest.approx(0.6 - 4.302653 * 0.1 / 3**0.5, abs=1e-5)


def test_probe_ignores_padding_and_learns_a_set_rule():
    """Class = which of 3 marker directions appears in *one* token of a variable-size set."""
    torch.manual_seed(0)
    probe = AttentiveProbe(32, 3)
    x = torch.randn(2, 5, 32)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    padded = torch.cat([x, torch.randn(2, 3, 32)], 1)
    pad2 = torch.cat([pad, torch.ones(2, 3, dtype=torch.bool)], 1)
    assert torch.allclose(probe(x, pad), probe(padded, pad2), atol=1e-6)

    rng = np.random.default_rng(0)
    markers = torch.from_numpy(rng.normal(0, 3, (3, 32)).astype(np.float32))

    def sample(n):
        xs, ys = [], []
        for _ in range(n):
            y = int(rng.integers(3))
            tokens = torch.from_numpy(rng.normal(0, 1, (int(rng.integers(6, 20)), 32)).astype(np.float32))
            tokens[int(rng.integers(len(tokens)))] += markers[y]
            xs.append(tokens.half())
            ys.append(y)
        return xs, ys

    tx, ty = sample(160)
    vx, vy = sample(90)
    result = fit_probe(tx, ty, vx, vy, 3, seed=0, epochs=8, lr=3e-3, batch=16)
    assert result["top1"] >= 0.9, result["curve"]
    assert result["ci95"][0] < result["top1"] <= result["ci95"][1] + 1e-9
    shuffled = fit_probe(tx, list(rng.permutation(ty)), vx, vy, 3, seed=0, epochs=4, lr=2e-3, batch=16)
    assert shuffled["top1"] < 0.6  # labels unrelated to the features cannot be learned


def _probe_set(folder, n=64, seed=0):
    """Video shards (class = colour of a moving square) whose json names a source file, plus labels.csv."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows = []
    with wds.TarWriter(str(folder / "probe-v1-00000.tar")) as sink:
        for i in range(n):
            c, fields, extra = video_sample(rng, frames=4)
            name = f"clip{i:03d}.mp4"
            sink.write(
                {
                    "__key__": f"k{i:04d}",
                    "json": encode_json({"modality": "video", "source": f"/x/{name}", **extra}),
                    **fields,
                }
            )
            rows.append({"name": name, "split": "train" if i < 3 * n // 4 else "test", "label": c, "task": "colour"})
    rows.append({"name": "unlabelled.mp4", "split": "train", "label": -1, "task": "colour"})
    with (folder / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["task", "split", "name", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return folder


def test_input_modes_give_the_budgeted_tokens_at_their_positions(tmp_path):
    items = read_dataset(_probe_set(tmp_path / "set", n=4))
    sample = items[0].sample
    patches, pos = tokens_of(sample, "codec", 0, 64, 16)
    assert patches.shape == (24, 3 * 16 * 16)  # the 24 codec patches the sample carries
    patches, pos = tokens_of(sample, "frames", 2, 64, 16)
    assert patches.shape[0] == 2 * 16 and sorted(set(pos[:, 0].tolist())) == [0.0, 3.0]  # first and last frame
    patches, pos = tokens_of(sample, "spatial", 0, 64, 16)
    assert patches.shape[0] == 16 and set(pos[:, 0].tolist()) == {0.0}
    with pytest.raises(ValueError, match="5 frames asked, 4 stored"):
        tokens_of(sample, "frames", 5, 64, 16)
    # image sets: the whole image in every mode
    _, fields = image_sample(np.random.default_rng(0))
    image = {"json": encode_json({"modality": "image"}), **fields}
    for mode in ("spatial", "codec", "frames"):
        patches, pos = tokens_of(image, mode, 8, 64, 16)
        assert patches.shape[0] == 16 and set(pos[:, 0].tolist()) == {0.0}


def test_probe_cli_reads_a_run_and_a_labelled_set(tmp_path, capsys):
    shards = write_shards(tmp_path / "train-shards", n_shards=1, per_shard=8)
    cfg = manifests.build(RunConfig, base_config(tmp_path, shards, steps=2))
    train(cfg)
    dataset = _probe_set(tmp_path / "set")
    out = tmp_path / "probe.json"
    code = main(
        [
            str(tmp_path / "runs" / "t"),
            str(dataset),
            "--mode",
            "frames",
            "--frames",
            "4",
            "--size",
            "64",
            "--seeds",
            "0,1",
            "--epochs",
            "12",
            "--lr",
            "3e-3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["train"] == 48 and result["test"] == 16 and len(result["runs"]) == 2
    assert result["tokens_per_sample"] == 4 * 16
    # the class is the colour of a square seen in every frame: far above the 25 % chance
    assert result["top1_mean"] >= 0.7, result
    assert "over 2 seed(s)" in capsys.readouterr().out
    # the encoder-free reference reads the same colour from patch thumbnails
    assert (
        main(
            [
                "pixels",
                str(dataset),
                "--mode",
                "frames",
                "--frames",
                "4",
                "--size",
                "64",
                "--seeds",
                "0",
                "--epochs",
                "12",
                "--lr",
                "3e-3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["top1_mean"] >= 0.7
    assert main([str(tmp_path / "nowhere"), str(dataset)]) == 2
    assert "not a release" in capsys.readouterr().err
