"""Checkpoints through torch.distributed.checkpoint (DCP), resumable to the exact next sample.

A checkpoint is a folder ``step_XXXXXXXX/`` holding the DCP shards of the model (encoder and
sharded concept centres), the optimizer and the step; one ``rank_XXXXX.pt`` per rank with
that rank's RNG states and data-stream state; and ``meta.json`` with the model flavour, heads
and last metrics, checked before anything is loaded so a mismatched checkpoint fails with a
clear message. Folders appear atomically (written as ``.tmp``, then renamed); the last k stay.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from train.config import RunConfig


class CheckpointError(ValueError):
    pass


def model_meta(cfg: RunConfig) -> dict:
    return {
        "flavour": cfg.model.flavour,
        "patch": cfg.model.patch,
        "dims": list(cfg.model.dims),
        "rope_theta": cfg.model.rope_theta,
        "head_update": cfg.optim.head_update,
        "heads": {
            h.name: {"num_classes": h.num_classes, "bank": h.bank, "bank_version": h.bank_version} for h in cfg.heads
        },
    }


def read_meta(folder: str | Path) -> dict:
    path = Path(folder) / "meta.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a checkpoint (no meta.json)")
    return json.loads(path.read_text())


def check_compatible(meta: dict, cfg: RunConfig, folder, heads: bool = True):
    mine = model_meta(cfg)
    for key in ("flavour", "patch", "dims"):
        if meta[key] != mine[key]:
            raise CheckpointError(f"{folder}: checkpoint has model {key}={meta[key]}, this run has {mine[key]}")
    if heads:
        theirs = meta.get("head_update", "dense")  # checkpoints before the setting were dense
        if theirs != mine["head_update"]:
            raise CheckpointError(
                f"{folder}: heads were trained with optim.head_update = {theirs!r}, this run has "
                f"{mine['head_update']!r} (their optimizer state differs); resume with --optim.head_update={theirs}"
            )
        for name, h in mine["heads"].items():
            theirs = meta["heads"].get(name)
            if theirs is None or theirs["num_classes"] != h["num_classes"]:
                raise CheckpointError(f"{folder}: head {name!r} is {theirs} in the checkpoint, {h} in this run")


def latest(root: str | Path) -> Path | None:
    found = sorted(p for p in Path(root).glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
    return found[-1] if found else None


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Checkpointer:
    def __init__(self, root: str | Path, cfg: RunConfig, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.root, self.cfg, self.model, self.optimizer = Path(root), cfg, model, optimizer
        self.rank = dist.get_rank() if dist.is_initialized() else 0

    def _barrier(self):
        if dist.is_initialized():
            dist.barrier()

    def save(self, step: int, data_state: dict, metrics: dict | None = None, config_toml: str = ""):
        final = self.root / f"step_{step:08d}"
        tmp = self.root / f"step_{step:08d}.tmp"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()
        state = {
            "model": get_model_state_dict(self.model),
            "optim": get_optimizer_state_dict(self.model, self.optimizer),
            "train": {"step": torch.tensor(step)},
        }
        dcp.save(state, checkpoint_id=str(tmp))
        torch.save({"rng": _rng_state(), "data": data_state, "step": step}, tmp / f"rank_{self.rank:05d}.pt")
        self._barrier()
        if self.rank == 0:
            meta = dict(model_meta(self.cfg), step=step, world=dist.get_world_size() if dist.is_initialized() else 1)
            meta["metrics"] = metrics or {}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            (tmp / "config.toml").write_text(config_toml)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in sorted(p for p in self.root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))[
                : -self.cfg.keep_last
            ]:
                shutil.rmtree(old, ignore_errors=True)
        self._barrier()
        return final

    def resume(self) -> tuple[int, dict | None]:
        """Load the newest checkpoint of this run, if any: (step, this rank's data state)."""
        folder = latest(self.root)
        if folder is None:
            return 0, None
        meta = read_meta(folder)
        check_compatible(meta, self.cfg, folder)
        state = {
            "model": get_model_state_dict(self.model),
            "optim": get_optimizer_state_dict(self.model, self.optimizer),
            "train": {"step": torch.tensor(0)},
        }
        dcp.load(state, checkpoint_id=str(folder))
        set_model_state_dict(self.model, state["model"])
        set_optimizer_state_dict(self.model, self.optimizer, state["optim"])
        step = int(state["train"]["step"])
        extra = folder / f"rank_{self.rank:05d}.pt"
        data_state = None
        world = dist.get_world_size() if dist.is_initialized() else 1
        if extra.is_file() and meta.get("world") == world:
            blob = torch.load(extra, weights_only=False)
            _set_rng_state(blob["rng"])
            data_state = blob["data"]
        elif self.rank == 0:
            print(f"[train] {folder}: world size changed ({meta.get('world')} -> {world}); data order restarts")
        return step, data_state

    def init_from(self, folder: str | Path):
        """Start a new stage from an earlier one: encoder weights, plus heads of equal name and size.

        Only weights: a head's AdamW moments (buffers under ``optim.head_update = "sampled"``) start anew,
        as the torch optimizer's do.
        """
        folder = Path(folder)
        meta = read_meta(folder)
        check_compatible(meta, self.cfg, folder, heads=False)
        full = get_model_state_dict(self.model)
        keep = [h.name for h in self.cfg.heads if meta["heads"].get(h.name, {}).get("num_classes") == h.num_classes]
        wanted = {
            k: v
            for k, v in full.items()
            if k.startswith("encoder.") or any(k == f"heads.heads.{n}.weight" for n in keep)
        }
        dcp.load({"model": wanted}, checkpoint_id=str(folder))
        set_model_state_dict(self.model, wanted, options=StateDictOptions(strict=False))
        return keep
