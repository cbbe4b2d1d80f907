"""The release's ``preprocessor_config.json``: the processor of its training run, and its card's loading section.

Release-time only (it reads the run's resolved config), so it stays out of the processor module
that ``hf`` releases ship.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

from train.config import DataConfig
from train.inputs import image_size_at
from train.release.processing import OvforgeImageProcessor


def finish_release(out: Path, loading: str) -> OvforgeImageProcessor:
    """Add the processor of the release's training run to ``out`` and put ``loading`` in its card."""
    native = json.loads((out / "config.json").read_text())
    run_toml = out / "train_config.toml"
    run = tomllib.loads(run_toml.read_text()) if run_toml.is_file() else {}
    processor = processor_for_run(run, native["patch"], native["step"])
    processor.save_pretrained(out)
    card = (out / "README.md").read_text().split("## Loading")[0]
    (out / "README.md").write_text(card + loading)
    return processor


def processor_for_run(run: dict, patch: int, step: int) -> OvforgeImageProcessor:
    """The processor matching a training run's resolved ``[data]`` section (sizes at its last step)."""
    fields = {f.name for f in dataclasses.fields(DataConfig)}
    data = {k: v for k, v in run.get("data", {}).items() if k in fields}
    data["resolution_schedule"] = tuple(tuple(s) for s in data.get("resolution_schedule", ()))
    cfg = DataConfig(**{k: v for k, v in data.items() if k != "shards"})
    shares = {"codec": cfg.codec_share, "frames": cfg.frames_share, "collage": cfg.collage_share}
    return OvforgeImageProcessor(
        patch=patch,
        image_size=image_size_at(cfg, max(step - 1, 0)),
        video_size=cfg.video_size,
        max_frames=cfg.max_frames,
        video_mode=max(shares, key=shares.get),
    )
