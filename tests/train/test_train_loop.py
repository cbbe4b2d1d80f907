"""End-to-end runs of the debug flavour on small labelled shards (CPU, one process unless noted)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from trainkit import base_config, read_metrics, write_toml

import manifests
from train.checkpoint import CheckpointError
from train.config import OptimConfig, RunConfig
from train.loop import train
from train.optim import lr_factor
from train.release.native import set_name

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _build(cfg: dict) -> RunConfig:
    return manifests.build(RunConfig, cfg)


def test_loss_falls_on_labelled_shards(tmp_path, shard_factory):
    shards = shard_factory(n_shards=2, per_shard=32)
    heads = [{"name": "image", "modalities": ["image"], "num_classes": 12, "sample_rate": 1.0, "scale": 16.0}]
    cfg = base_config(
        tmp_path, shards, steps=30, heads=heads, data={"batch_size": 16}, optim={"lr": 5e-3, "warmup_steps": 3}
    )
    records = train(_build(cfg))
    losses = [r["loss"] for r in records]
    assert len(losses) == 30
    first, last = sum(losses[:3]) / 3, sum(losses[-5:]) / 5
    assert last < 0.75 * first, losses


def test_mixed_modalities_three_heads_and_accumulation(tmp_path, shard_factory):
    shards = shard_factory(n_shards=2, per_shard=12, modalities=("image", "ocr", "video"))
    heads = [
        {"name": "image", "modalities": ["image"], "num_classes": 12, "weight": 1.0},
        {"name": "ocr", "modalities": ["ocr"], "num_classes": 12, "weight": 0.5, "sample_rate": 0.5, "labels": "words"},
        {"name": "video", "modalities": ["video"], "num_classes": 12, "weight": 2.0, "sample_rate": 1.0},
    ]
    data = {"batch_size": 6, "codec_share": 0.4, "frames_share": 0.4, "collage_share": 0.2}
    cfg = base_config(tmp_path, shards, steps=3, accum=2, heads=heads, data=data, parallel={"dtype": "bf16"})
    records = train(_build(cfg))
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert {"loss/image", "loss/ocr", "loss/video"} <= set(r)
        assert r["samples"] == 12  # two micro-batches of six
        weighted = r["loss/image"] + 0.5 * r["loss/ocr"] + 2.0 * r["loss/video"]
        assert abs(r["loss"] - weighted) < 1e-3 * abs(weighted)


def _wait_for(path: Path, predicate, proc, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        if path.exists() and predicate(path):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def test_killed_run_resumes_with_identical_losses(tmp_path, shard_factory):
    shards = shard_factory(n_shards=3, per_shard=10)  # 3 shards of 10 and batches of 4: resumes mid-shard
    common = {"steps": 24, "save_every": 5, "log_every": 1, "data": {"batch_size": 4, "workers": 2}}
    full = base_config(tmp_path, shards, name="full", **common)
    killed = base_config(tmp_path, shards, name="killed", **common)
    train(_build(full))
    reference = read_metrics(tmp_path / "runs/full/metrics.jsonl")

    manifest = write_toml(tmp_path / "killed.toml", killed)
    proc = subprocess.Popen(
        [sys.executable, "-m", "train", str(manifest)], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL
    )
    ckpts = tmp_path / "runs/killed/checkpoints"
    # kill -9 once step 10 is saved and a few more steps are logged (mid-way through step 11-14)
    seen = _wait_for(ckpts / "step_00000010", lambda p: True, proc)
    metrics = tmp_path / "runs/killed/metrics.jsonl"
    _wait_for(metrics, lambda p: len(p.read_text().splitlines()) >= 12, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert seen, "the run finished or failed before it could be killed"
    logged = read_metrics(metrics)
    assert max(logged) < 24, "the run was not interrupted"
    saved = max(int(p.name[5:]) for p in ckpts.glob("step_????????"))

    rc = subprocess.run(
        [sys.executable, "-m", "train", str(manifest)], cwd=ROOT, env=ENV, capture_output=True, text=True
    )
    assert rc.returncode == 0, rc.stderr[-2000:]
    assert rc.stdout.splitlines()[0].startswith(f"[train] step {saved + 1}/24 "), rc.stdout[:300]
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_00000015", "step_00000020", "step_00000024"]  # last 3
    resumed = read_metrics(metrics)  # later lines (the resumed run) replace the killed run's
    assert sorted(resumed) == sorted(reference)
    for step, rec in reference.items():
        assert resumed[step]["loss"] == pytest.approx(rec["loss"], rel=1e-5, abs=1e-6), step
        assert resumed[step]["lr"] == rec["lr"]


def test_stage2_starts_from_stage1_checkpoint(tmp_path, shard_factory):
    img = shard_factory(sub="img", n_shards=2, per_shard=8)
    mixed = shard_factory(sub="mixed", n_shards=2, per_shard=9, modalities=("image", "ocr", "video"), seed=1)
    out = str(tmp_path / "runs")
    small = [
        "--model.flavour=debug",
        f"--out_dir={out}",
        "--parallel.compile=false",
        "--parallel.dtype=fp32",
        "--data.batch_size=6",
        "--data.workers=0",
        "--save_every=0",
        "--optim.warmup_steps=1",
    ]
    over1 = manifests.parse_overrides(
        small
        + [
            f"--data.shards={img!r}".replace("'", '"'),
            "--steps=3",
            "--data.image_size=32",
            "--data.resolution_schedule=[[2, 48]]",
            "--heads.0.num_classes=12",
            "--log_every=1",
        ]
    )
    stage1 = manifests.load(RunConfig, ROOT / "manifests/runs/stage1.toml", over1)
    train(stage1)
    ckpt = tmp_path / "runs/stage1/checkpoints/step_00000003"
    assert (ckpt / "meta.json").is_file()
    # 32 px (2x2 tokens) for steps 1-2, then 48 px (3x3) from step 3 on: the resolution schedule
    tokens = {s: r["tokens"] for s, r in read_metrics(tmp_path / "runs/stage1/metrics.jsonl").items()}
    assert tokens == {1: 24, 2: 24, 3: 54}
    torch.distributed.destroy_process_group()

    over2 = manifests.parse_overrides(
        small
        + [
            f"--data.shards={mixed!r}".replace("'", '"'),
            "--steps=2",
            f"--init_from={ckpt}",
            "--data.image_size=32",
            "--data.video_size=32",
            "--heads.0.num_classes=12",
            "--heads.1.num_classes=12",
            "--heads.2.num_classes=12",
        ]
    )
    stage2 = manifests.load(RunConfig, ROOT / "manifests/runs/stage2.toml", over2)
    assert [h.name for h in stage2.heads] == ["image", "ocr", "video"] and stage2.optim.decay == "poly"
    train(stage2)
    torch.distributed.destroy_process_group()

    # the stage-2 run began from stage 1's weights: its step-0 weights equal stage 1's final ones
    from torch.distributed.checkpoint import load

    from train.config import ModelConfig
    from train.model import Encoder

    def weights(folder):
        sd = {f"encoder.{k}": v for k, v in Encoder(ModelConfig("debug")).state_dict().items()}
        load({"model": sd}, checkpoint_id=str(folder))
        return sd

    s1 = weights(ckpt)
    s2 = weights(tmp_path / "runs/stage2/checkpoints/step_00000002")
    drift = max((s1[k] - s2[k]).abs().max().item() for k in s1)
    assert 0 < drift < 0.05  # two small AdamW steps away from stage 1, not a fresh init


def test_bad_inputs_fail_before_the_first_step(tmp_path, shard_factory):
    shards = shard_factory(n_shards=1, per_shard=4)
    cfg = base_config(tmp_path, shards)
    # unknown key in a manifest
    bad = write_toml(tmp_path / "bad.toml", {**cfg, "optim": {**cfg["optim"], "learning_rate": 1e-3}})
    rc = subprocess.run([sys.executable, "-m", "train", str(bad)], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert rc.returncode == 2 and "unknown key 'optim.learning_rate'" in rc.stderr
    with pytest.raises(manifests.ManifestError, match="unknown key 'optim.warmup'"):
        manifests.load(RunConfig, write_toml(tmp_path / "ok.toml", cfg), {"optim.warmup": 3})
    # a bank whose class count disagrees with the head
    import numpy as np

    np.save(tmp_path / "bank.npy", np.zeros((10, 64), np.float32))
    heads = [{"name": "image", "modalities": ["image"], "num_classes": 12, "bank": str(tmp_path / "bank.npy")}]
    with pytest.raises(ValueError, match="holds 10 classes"):
        train(_build(base_config(tmp_path, shards, heads=heads)))
    # shards without labels, through the command line: a one-line error, no traceback, no step
    unlabelled = shard_factory(sub="nolabels", n_shards=1, per_shard=4, labels=False)
    manifest = write_toml(tmp_path / "nolabels.toml", base_config(tmp_path, unlabelled, name="nolabels"))
    rc = subprocess.run(
        [sys.executable, "-m", "train", str(manifest)], cwd=ROOT, env=ENV, capture_output=True, text=True
    )
    assert rc.returncode == 2 and "no cls.npy labels" in rc.stderr and "Traceback" not in rc.stderr
    assert (
        not (tmp_path / "runs/nolabels/metrics.jsonl").exists()
        or not (tmp_path / "runs/nolabels/metrics.jsonl").read_text()
    )
    # a checkpoint from another flavour
    train(_build(base_config(tmp_path, shards, name="flav", steps=1)))
    other = base_config(tmp_path, shards, name="flav", steps=2, model={"flavour": "base"})
    with pytest.raises(CheckpointError, match="flavour=debug.*this run has base"):
        train(_build(other))
    with pytest.raises(CheckpointError, match="flavour=debug"):
        train(_build({**other, "name": "fresh", "init_from": str(tmp_path / "runs/flav/checkpoints/step_00000001")}))


def test_dense_head_update_trains_and_each_mode_resumes_only_its_own_checkpoints(tmp_path, shard_factory):
    shards = shard_factory(n_shards=2, per_shard=16)
    heads = [{"name": "image", "modalities": ["image"], "num_classes": 12, "sample_rate": 0.5, "scale": 16.0}]
    common = {"heads": heads, "data": {"batch_size": 8}, "optim": {"lr": 5e-3, "head_update": "dense"}}
    records = train(_build(base_config(tmp_path, shards, name="dense", steps=12, **common)))
    losses = [r["loss"] for r in records]
    assert sum(losses[-3:]) < 0.9 * sum(losses[:3]), losses
    longer = base_config(tmp_path, shards, name="dense", steps=13, **common)
    assert [r["step"] for r in train(_build(longer))] == [13]  # resumed in its own mode
    sampled = {**longer, "steps": 14, "optim": {**longer["optim"], "head_update": "sampled"}}
    with pytest.raises(CheckpointError, match="head_update = 'dense', this run has 'sampled'"):
        train(_build(sampled))
    # a new stage may switch: only weights are taken from the earlier one
    ckpt = str(tmp_path / "runs/dense/checkpoints/step_00000013")
    stage = train(_build({**sampled, "name": "next", "steps": 1, "init_from": ckpt}))
    assert len(stage) == 1 and stage[0]["loss"] < losses[0]


def test_bf16_head_moments_train_and_take_over_a_run_with_fp32_ones(tmp_path, shard_factory):
    shards = shard_factory(n_shards=2, per_shard=16)
    heads = [{"name": "image", "modalities": ["image"], "num_classes": 12, "sample_rate": 0.5, "scale": 16.0}]
    common = {"heads": heads, "data": {"batch_size": 8}}
    records = train(_build(base_config(tmp_path, shards, name="mom", steps=6, optim={"lr": 5e-3}, **common)))
    bf16 = {"lr": 5e-3, "head_moments": "bf16"}
    more = train(_build(base_config(tmp_path, shards, name="mom", steps=12, optim=bf16, **common)))
    assert [r["step"] for r in more] == list(range(7, 13))  # resumed: the fp32 moments loaded as bf16
    losses = [r["loss"] for r in records + more]
    assert sum(losses[-3:]) < 0.9 * sum(losses[:3]), losses
    from torch.distributed.checkpoint import FileSystemReader

    saved = FileSystemReader(str(tmp_path / "runs/mom/checkpoints/step_00000012")).read_metadata()
    moments = {k: m.properties.dtype for k, m in saved.state_dict_metadata.items() if k.startswith("model.heads")}
    assert moments["model.heads.heads.image.exp_avg"] == moments["model.heads.heads.image.exp_avg_sq"] == torch.bfloat16
    with pytest.raises(ValueError, match='head_moments = "bf16" needs optim.head_update = "sampled"'):
        _build(base_config(tmp_path, shards, optim={**bf16, "head_update": "dense"}, **common))


def test_schedule_is_a_pure_function_of_the_step():
    cos = OptimConfig(lr=1.0, warmup_steps=10, decay="cosine", min_lr_ratio=0.1)
    assert lr_factor(0, 110, cos) == pytest.approx(0.1)
    assert lr_factor(9, 110, cos) == pytest.approx(1.0)
    assert lr_factor(60, 110, cos) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(110, 110, cos) == pytest.approx(0.1)
    poly = OptimConfig(warmup_steps=0, decay="poly", power=2.0)
    assert lr_factor(50, 100, poly) == pytest.approx(0.25)  # the closed form, not the reference's ~0.5


def test_release_reloads_bit_exactly_in_a_fresh_process(tmp_path, shard_factory):
    shards = shard_factory(n_shards=1, per_shard=8)
    train(_build(base_config(tmp_path, shards, name="rel", steps=2)))
    ckpt = tmp_path / "runs/rel/checkpoints/step_00000002"
    out = tmp_path / "release"
    probe = tmp_path / "probe.json"  # what train.experimental.probe --out writes, with known figures
    probe.write_text(json.dumps({"mode": "codec", "top1_mean": 0.4125, "ci95_seeds": [0.38, 0.445], "chance": 0.25,
                                 "runs": [{}, {}, {}, {}], "tokens_per_sample": 512}))  # fmt: skip
    rc = subprocess.run(
        [sys.executable, "-m", "train.release", str(ckpt), str(out), "--probe", str(probe)],
        cwd=ROOT, env=ENV, capture_output=True, text=True,
    )  # fmt: skip
    assert rc.returncode == 0, rc.stderr
    card = (out / "README.md").read_text()
    logged = read_metrics(tmp_path / "runs/rel/metrics.jsonl")
    assert "![training loss](loss.png)" in card and (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert f"{logged[max(logged)]['loss']:.4f} at step {max(logged)}" in card
    assert "| codec | 41.2 % | [38.0, 44.5] % | 25.0 % | 4 | 512 |" in card
    # the training set by its name, never by a local path
    assert set_name(shards[0]) in card and str(tmp_path) not in card
    assert "| image | 12 |" in card and '"loss"' in card and "load_release" in card

    # embeddings of the checkpoint, computed here
    from torch.distributed.checkpoint import load

    from train.config import ModelConfig
    from train.model import Encoder
    from train.packing import pack, patchify

    enc = Encoder(ModelConfig("debug")).eval()
    sd = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    load({"model": sd}, checkpoint_id=str(ckpt))
    enc.load_state_dict({k.removeprefix("encoder."): v for k, v in sd.items()})
    g = torch.Generator().manual_seed(0)
    batch = pack([patchify(torch.randn(3, 32, 48, generator=g), 16), patchify(torch.randn(3, 64, 32, generator=g), 16)])
    torch.save(batch, tmp_path / "batch.pt")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the child (OMP_NUM_THREADS=1): GEMM reductions split by thread count differ in bits
    try:
        with torch.no_grad():
            expected = enc(batch)
    finally:
        torch.set_num_threads(threads)

    script = (
        "import sys, torch; from train.release import load_release\n"
        "m = load_release(sys.argv[1]).eval(); b = torch.load(sys.argv[2], weights_only=False)\n"
        "with torch.no_grad(): torch.save(m(b), sys.argv[3])\n"
    )
    rc = subprocess.run(
        [sys.executable, "-c", script, str(out), str(tmp_path / "batch.pt"), str(tmp_path / "emb.pt")],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert rc.returncode == 0, rc.stderr
    assert torch.equal(torch.load(tmp_path / "emb.pt"), expected)


def test_ddp_and_fsdp_with_checkpointing_on_two_ranks_give_the_same_losses(tmp_path, shard_factory):
    shards = shard_factory(n_shards=4, per_shard=8, modalities=("image", "video"))
    heads = [
        {"name": "image", "modalities": ["image"], "num_classes": 13, "sample_rate": 0.5},
        {"name": "video", "modalities": ["video"], "num_classes": 12, "sample_rate": 1.0},
    ]
    losses = {}
    for mode in ("ddp", "fsdp"):
        parallel = {"dtype": "fp32", "mode": mode, "activation_checkpointing": mode == "fsdp"}
        cfg = base_config(tmp_path, shards, name=mode, steps=4, accum=2, heads=heads, parallel=parallel)
        manifest = write_toml(tmp_path / f"{mode}.toml", cfg)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "train", str(manifest)]
        rc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
        assert rc.returncode == 0, rc.stderr[-3000:]
        losses[mode] = {s: r["loss"] for s, r in read_metrics(tmp_path / f"runs/{mode}/metrics.jsonl").items()}
        assert (
            sorted((tmp_path / f"runs/{mode}/checkpoints/step_00000004").glob("rank_*.pt"))[-1].name == "rank_00001.pt"
        )
    assert sorted(losses["ddp"]) == [1, 2, 3, 4]
    for step, loss in losses["ddp"].items():
        assert losses["fsdp"][step] == pytest.approx(loss, rel=1e-4), step


def test_non_finite_steps_are_skipped_then_the_run_stops_with_advice(tmp_path, shard_factory, capsys):
    from train.optim import step_if_finite

    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    w.grad = torch.tensor([1.0, float("nan"), 0.0])
    assert not step_if_finite([opt], torch.tensor(float("nan")))
    assert torch.equal(w.detach(), torch.ones(3)) and w.grad is None  # nothing learned from the bad step
    w.grad = torch.ones(3)
    assert step_if_finite([opt], torch.tensor(1.0)) and torch.allclose(w.detach(), torch.full((3,), 0.9))

    # a learning rate that blows the weights up: every later step is non-finite, the run stops
    shards = shard_factory(n_shards=1, per_shard=16)
    cfg = base_config(tmp_path, shards, steps=10, max_bad_steps=2, optim={"lr": 1e35, "warmup_steps": 0})
    with pytest.raises(ValueError, match="3 consecutive steps with non-finite gradients"):
        train(_build(cfg))
    assert "non-finite gradients" in capsys.readouterr().out
    records = read_metrics(tmp_path / "runs" / "t" / "metrics.jsonl")
    skipped = [records[s]["skipped_steps"] for s in sorted(records)]
    assert skipped[0] == 0 and skipped[-1] == 2, skipped  # the first step learned; two skips were logged


class _NanBackward(torch.autograd.Function):
    """Identity forward, NaN gradient backward: a fault injected where only backward goes wrong."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


@pytest.mark.parametrize("fault", ["forward", "backward"])
def test_a_skipped_step_is_rerun_watched_and_names_the_module_that_made_the_nan(tmp_path, shard_factory, fault):
    from train.loop import build, train_step

    shards = shard_factory(n_shards=1, per_shard=16)
    t = build(_build(base_config(tmp_path, shards, steps=4, accum=2)))
    try:
        assert train_step(t, 0).grad_norm.isfinite()
        assert not (t.run_dir / "nonfinite").exists()  # a finite step is not diagnosed
        if fault == "forward":  # one weight of block 1's first MLP layer is infinite
            with torch.no_grad():
                t.encoder.blocks[1].mlp[0].weight[3, 5] = float("inf")
        else:  # block 0's MLP returns a NaN gradient, its forward stays finite
            mlp = t.encoder.blocks[0].mlp
            forward = mlp.forward
            mlp.forward = lambda x: _NanBackward.apply(forward(x))
        before = {k: v.clone() for k, v in t.encoder.state_dict().items()}
        train_step(t, 1)
        report = json.loads((t.run_dir / "nonfinite" / "step_00000002.json").read_text())
    finally:
        t.stream.close()
    assert t.bad_steps == 1 and report["reproduced"]
    assert len(report["losses"]) == 2 and len(report["micro_batches"]) == 2
    if fault == "forward":
        assert report["first_non_finite_forward"] == "encoder.blocks.1.mlp.0"
        assert report["non_finite_parameters"] == ["encoder.blocks.1.mlp.0.weight"]
    else:
        assert report["first_non_finite_forward"] is None and report["non_finite_parameters"] == []
        assert report["first_non_finite_backward"] == "encoder.blocks.0.mlp"
        assert "encoder.blocks.0.mlp.0.weight" in report["non_finite_parameter_grads"]
        assert "encoder.blocks.1.mlp.0.weight" not in report["non_finite_parameter_grads"]  # after it in forward
    after = t.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing learned from the step or its rerun
    assert all(p.grad is None for p in t.encoder.parameters())
