"""Trainer parity on the CPU: the same run on one process and on two gloo ranks, under DDP and FSDP2.

``train.loop.train`` runs unchanged; the two-rank runs share one spawn. What makes the runs equal:

* data: shards of exactly ``B`` samples and an even shard count, so the one-rank micro-batch of
  ``2B`` (shards ``o[0], o[1]`` of the epoch's permutation, in order) is what the two ranks read
  (rank 0 ``o[0]``, rank 1 ``o[1]``), gathered by the heads in rank order: same samples, same rows,
  hence the same label draw;
* heads: ``sample_rate = 1.0``. Below 1 each rank samples negatives among its own centre rows with
  its own generator, so the scored set depends on the sharding by design; at 1.0 every class is
  scored and the model-parallel softmax equals the full one (test_train_loss.py checks that);
* centres: random initial rows are drawn per block of the global row space, so every sharding
  starts from the same matrix;
* ``dtype = "fp32"`` and a clip low enough to act on every step (backbone and sharded heads alone).

Tolerance: gradients are summed in another order on two ranks (all-reduce instead of one
accumulation) and AdamW's first steps scale each coordinate by 1/|g|, so rounding (1e-7) grows;
losses and gradient norms agree to rtol 1e-4 after a few steps (measured below 1e-5).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ports import free_port
from trainkit import base_config, write_shards

import manifests
from train.config import HeadConfig, RunConfig
from train.loop import train
from train.loss import PartialFC, shard_range

B, STEPS, ACCUM, WORLD = 2, 3, 2, 2
MODES = ("ddp", "fsdp")
KEYS = ("loss", "grad_norm", "head_grad_norm", "samples", "tokens")
C, D = 37, 16  # a head whose class count does not divide by the world size


def _config(tmp, shards, name: str, world: int, mode: str) -> RunConfig:
    cfg = base_config(
        tmp,
        shards,
        name=name,
        steps=STEPS,
        accum=ACCUM,
        data={"batch_size": B * WORLD // world, "workers": 0},
        optim={"lr": 2e-3, "warmup_steps": 1, "clip": 0.05},
        parallel={"mode": mode, "dtype": "fp32"},
    )
    return manifests.build(RunConfig, cfg)


def _worker(rank, world, port, tmp, shards, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    res = {}
    for mode in MODES:
        records = train(_config(tmp, shards, f"w{world}_{mode}", world, mode))
        res[mode] = [{k: r[k] for k in KEYS} for r in records]

    # partial FC with sampled negatives (rate 0.5): each rank scores its own sample of its rows, yet
    # every rank must compute the same loss value (row maxima, sum-exps and target logits are
    # all-reduced): the gradient bookkeeping of train.loss relies on it
    head = PartialFC(HeadConfig(num_classes=C, sample_rate=0.5, draw=3, filter=2.0), D, seed=0)
    res["centres"] = (shard_range(C, rank, world), head.local_weight().detach().clone())
    g = torch.Generator().manual_seed(1)
    emb, labels = torch.randn(2 * world, D, generator=g), torch.randint(0, C, (2 * world, 4), generator=g)
    rows = slice(2 * rank, 2 * rank + 2)
    loss = head(emb[rows], labels[rows], torch.Generator().manual_seed(5), torch.Generator().manual_seed(rank))
    res["sampled"] = loss.detach()
    out[rank] = res
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parity")
    shards = write_shards(tmp / "shards", n_shards=4, per_shard=B)  # one epoch = one step of 2 x 2 x B samples
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(WORLD, free_port(), tmp, shards, out), nprocs=WORLD, join=True)
    # one process: no wrapping at all (parallelize leaves a world of one alone), so one reference serves both modes
    records = train(_config(tmp, shards, "w1", 1, "ddp"))
    dist.destroy_process_group()
    return [{k: r[k] for k in KEYS} for r in records], dict(out)


@pytest.mark.parametrize("mode", MODES)
def test_two_ranks_match_one_rank_step_by_step(runs, mode):
    reference, out = runs
    assert [r["samples"] for r in reference] == [2 * B * WORLD] * STEPS
    for rank in range(WORLD):
        got = out[rank][mode]
        assert len(got) == STEPS
        for step, (a, b) in enumerate(zip(got, reference, strict=True)):
            assert (a["samples"], a["tokens"]) == (b["samples"], b["tokens"]), step
            for key in ("loss", "grad_norm", "head_grad_norm"):
                assert a[key] == pytest.approx(b[key], rel=1e-4), (mode, rank, step, key)
    # the clip acted on every step (so clipping by a sharded global norm is part of what is compared)
    assert all(r["grad_norm"] > 0.05 and r["head_grad_norm"] > 0.05 for r in reference)


def test_sharded_centres_start_equal_and_sampled_loss_is_one_value(runs):
    _, out = runs
    full = PartialFC(HeadConfig(num_classes=C), D, seed=0).local_weight().detach()  # no process group here
    for rank in range(WORLD):
        (lo, hi), local = out[rank]["centres"]
        assert torch.equal(local, full[lo:hi])
    assert torch.isfinite(out[0]["sampled"]) and torch.equal(out[0]["sampled"], out[1]["sampled"])
