"""One shard sample -> the encoder's input tokens: the trainer's per-modality decode.

Training (``train.data``, in the DataLoader workers), probing and the released transformers
processor all call ``sample_tokens``, so inference inputs equal training inputs bit for bit. Of
ovforge it imports only ``shards.fields``, ``train.config`` and ``train.packing`` (no reader, no
storage): ``python -m train.release --format hf`` copies it into the release.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from shards.fields import frames as stored_frames
from shards.fields import image as decoded_image
from shards.fields import mosaic, positions
from train.config import DataConfig
from train.packing import codec_tokens, normalise, patchify


def image_size_at(cfg: DataConfig, step: int) -> int:
    size = cfg.image_size
    for start, s in sorted(cfg.resolution_schedule):
        if step >= start:
            size = s
    return size


def _rgb(data: bytes) -> Image.Image:
    return Image.fromarray(decoded_image(data))


def _square(img: Image.Image, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` and centre-crop: uint8 (3, size, size)."""
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def frame_images(sample: dict, meta: dict, count: int, size: int) -> tuple[list[torch.Tensor], list[float]]:
    """Up to ``count`` of the stored whole frames, evenly spaced, squared to ``size``; their clip times."""
    stored, ids = stored_frames(sample["frames.jpg"], meta)
    keep = np.unique(np.linspace(0, len(ids) - 1, min(len(ids), count)).round().astype(int))
    return [_square(Image.fromarray(stored[i]), size) for i in keep], [float(ids[i]) for i in keep]


def codec_input(sample: dict, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A video sample's codec tokens (mosaic + positions) -> (patches, (t, h, w) positions)."""
    pos = positions(sample["pos.npy"])
    patches = np.ascontiguousarray(mosaic(sample["patches.jpg"], len(pos)).transpose(0, 3, 1, 2))
    return codec_tokens(normalise(torch.from_numpy(patches)), torch.from_numpy(pos.astype(np.float32)), patch)


def frames_input(frames: list[torch.Tensor], times: list[float], patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole frames, each at its own t: every patch of every frame."""
    parts = [patchify(normalise(f), patch, t) for f, t in zip(frames, times, strict=True)]
    return torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts])


def image_input(data: bytes, size: int, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    return patchify(normalise(_square(_rgb(data), size)), patch)


def sample_meta(sample: dict) -> dict:
    """The sample's ``json`` metadata (already parsed by the reader as ``meta``)."""
    return sample["meta"] if "meta" in sample else json.loads(sample["json"])


VIDEO_MODES = ("codec", "frames", "collage", "spatial")


def video_tokens(sample: dict, meta: dict, mode: str, frames: int, size: int, patch: int):
    """A video sample's (patches, positions) in one input mode, for training and probing alike.

    ``codec``: the stored codec tokens; ``frames``: up to ``frames`` whole frames, evenly spaced, each
    at its own t; ``collage``: those frames stacked into one picture; ``spatial``: the middle one.
    """
    if mode == "codec":
        return codec_input(sample, patch)
    images, times = frame_images(sample, meta, frames, size)
    if mode == "frames":
        return frames_input(images, times, patch)
    if mode == "collage":
        return patchify(normalise(torch.cat(images, dim=1)), patch)
    if mode == "spatial":
        return frames_input([images[len(images) // 2]], [0.0], patch)
    raise ValueError(f"video mode {mode!r}: choose from {VIDEO_MODES}")


def sample_tokens(
    sample: dict, cfg: DataConfig, patch: int, size: int, mode_rng: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One shard sample -> (patches, (t, h, w) positions); ``mode_rng`` in [0, 1) picks a video's mode by the shares."""
    meta = sample_meta(sample)
    if meta.get("modality") in ("image", "ocr"):
        return image_input(sample["jpg"], size, patch)
    shares = np.array([cfg.codec_share, cfg.frames_share, cfg.collage_share])
    mode = int(np.searchsorted(np.cumsum(shares) / shares.sum(), mode_rng, side="right"))
    if "frames.jpg" not in sample:
        mode = 0
    if "patches.jpg" not in sample or "pos.npy" not in sample:
        mode = max(mode, 1)
    return video_tokens(sample, meta, VIDEO_MODES[mode], cfg.max_frames, cfg.video_size, patch)
