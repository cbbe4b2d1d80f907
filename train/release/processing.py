"""The release's preprocessor for transformers: images, frames and video files -> the trainer's tokens.

Every input is turned into the shard sample the trainer would read (image bytes; a video file
goes through ``curate.codec`` exactly as the ``codec_patchify`` stage does) and decoded by
``train.inputs.sample_tokens`` itself, so inference inputs equal training inputs bit for bit and follow
any change to the training data path. Samples are returned padded to the longest one:
``pixel_values`` (B, L, 3*p*p), ``positions`` (B, L, 3) int64 (t, h, w), ``attention_mask`` (B, L).

An ``hf`` release ships this module as ``processing_ovforge.py`` with the modules it imports
(``train.release.bundle``), so it runs where ovforge is not installed. The lazy ``curate.codec``
import is the trainer core's one import of ``curate``, by design: a raw video file at inference
never went through curation, so the shard contract cannot carry it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

from shards.format import encode_json
from train.config import DataConfig
from train.inputs import sample_tokens
from train.packing import CLIP_MEAN, CLIP_STD

VIDEO_MODES = ("codec", "frames", "collage")
# transformers' image-processor fields, derived from the settings (see OvforgeImageProcessor)
DESCRIBED = ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "size", "crop_size", "resample")
DESCRIBED += ("rescale_factor", "image_mean", "image_std", "patch_size")


def _lossless(img: Image.Image) -> bytes:
    """A decoded picture as bytes the trainer's image reader opens to the same pixels (PPM: raw RGB)."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PPM")
    return buf.getvalue()


def _picture(x) -> Image.Image:
    if isinstance(x, Image.Image):
        return x
    if isinstance(x, torch.Tensor):  # (3, H, W) uint8, torchvision's layout
        x = x.permute(1, 2, 0).numpy()
    return Image.fromarray(np.asarray(x, dtype=np.uint8))


def image_bytes(image) -> bytes:
    """Encoded file bytes (or a path) pass through unchanged, as a shard's ``jpg`` would."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    return _lossless(_picture(image))


def frames_sample(frames) -> dict:
    """Decoded frames (T, H, W, 3) uint8 or a list of pictures -> a video sample with whole frames only."""
    pictures = [_picture(f) for f in frames]
    stacked = np.concatenate([np.asarray(p.convert("RGB")) for p in pictures], axis=0)
    meta = {"modality": "video", "frames": {"ids": list(range(len(pictures)))}}
    return {"frames.jpg": _lossless(Image.fromarray(stacked)), "json": encode_json(meta)}


def codec_sample(video: bytes | str | Path, codec: dict) -> dict:
    """A video file -> the shard sample the ``codec_patchify`` stage writes for it (same functions)."""
    from curate.codec.patchify import PatchifyConfig, encode, patchify

    cfg = PatchifyConfig(**codec)
    fields = encode(patchify(video if isinstance(video, bytes) else str(video), cfg), cfg)
    meta = {"modality": "video", "codec": fields["codec"], "frames": fields["frames"]}
    return {
        "patches.jpg": fields["patches_jpg"],
        "pos.npy": fields["pos_npy"],
        "frames.jpg": fields["frames_jpg"],
        "json": encode_json(meta),
    }


class OvforgeImageProcessor(BaseImageProcessor):
    """Images and videos -> padded token batches for ``OvforgeModel`` (see the module docstring).

    ``videos`` items may be a video file (path or bytes: codec tokens, or its stored whole frames
    with ``video_mode="frames"``/``"collage"``), decoded frames (T, H, W, 3) or a list of pictures
    (frame sampling), or a curated shard sample (dict of field bytes). Images come first in the batch.

    The settings are ``patch``, ``image_size``, ``video_size``, ``max_frames``, ``video_mode`` and
    ``codec``. The fields transformers' image processors carry (``size``, ``crop_size``,
    ``image_mean``, ...) are written to ``preprocessor_config.json`` for tools that read them and
    say what the trainer's decode does; they follow from the settings, so on loading they are
    recomputed, not read.
    """

    model_input_names = ["pixel_values", "positions", "attention_mask"]

    def __init__(self, patch=16, image_size=224, video_size=224, max_frames=8, video_mode="codec", codec=None, **kw):
        for key in DESCRIBED:
            kw.pop(key, None)
        super().__init__(**kw)
        if video_mode not in VIDEO_MODES:
            raise ValueError(f"video_mode must be one of {VIDEO_MODES}, got {video_mode!r}")
        self.patch, self.image_size, self.video_size = patch, image_size, video_size
        self.max_frames, self.video_mode = max_frames, video_mode
        self.codec = dict(codec or {})  # curate.codec.PatchifyConfig fields for video files
        # what train.inputs does to an image: shorter side to image_size (bicubic), centre crop, CLIP normalisation
        self.do_resize, self.do_center_crop, self.do_rescale, self.do_normalize = True, True, True, True
        self.size, self.crop_size = {"shortest_edge": image_size}, {"height": image_size, "width": image_size}
        self.resample, self.rescale_factor = 3, 1 / 255  # 3: PIL's BICUBIC
        self.image_mean, self.image_std = list(CLIP_MEAN), list(CLIP_STD)
        self.patch_size = patch

    def _data_config(self, mode: str) -> DataConfig:
        shares = {f"{m}_share": float(m == mode) for m in VIDEO_MODES}
        return DataConfig(video_size=self.video_size, max_frames=self.max_frames, **shares)

    def tokens(self, sample: dict, modality: str, mode: str = "codec") -> tuple[torch.Tensor, torch.Tensor]:
        """One shard-style sample -> (patches (L, 3*p*p), positions (L, 3) float), via the trainer's decode."""
        if modality == "video" and mode == "codec" and "pos.npy" not in sample:
            raise ValueError(
                "codec tokens need the video file (its motion vectors) or a curated sample; "
                "decoded frames take video_mode='frames' or 'collage'"
            )
        meta = {**(json.loads(sample["json"]) if "json" in sample else {}), "modality": modality}
        sample = {**sample, "meta": meta}
        return sample_tokens(sample, self._data_config(mode), self.patch, self.image_size, 0.0)

    def preprocess(self, images=None, videos=None, video_mode: str | None = None, return_tensors="pt", **kwargs):
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        mode = video_mode or self.video_mode
        if mode not in VIDEO_MODES:
            raise ValueError(f"video_mode must be one of {VIDEO_MODES}, got {mode!r}")
        images = [] if images is None else images if isinstance(images, (list, tuple)) else [images]
        videos = [] if videos is None else videos if isinstance(videos, (list, tuple)) else [videos]
        if not images and not videos:
            raise ValueError("nothing to process: pass images=... and/or videos=...")
        items = [self.tokens({"jpg": image_bytes(x)}, "image") for x in images]
        for v in videos:
            if isinstance(v, dict):
                sample = v
            elif isinstance(v, (bytes, str, Path)):
                sample = codec_sample(v, self.codec)
            else:
                sample = frames_sample(v)
            items.append(self.tokens(sample, "video", mode))
        return BatchFeature(pad(items), tensor_type=return_tensors)

    def __call__(self, images=None, videos=None, **kwargs) -> BatchFeature:
        return self.preprocess(images, videos, **kwargs)


def pad(items: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """[(patches (L_i, D), positions (L_i, 3))] -> zero-padded batch with an attention mask."""
    longest, dim = max(p.shape[0] for p, _ in items), items[0][0].shape[1]
    pixels = torch.zeros(len(items), longest, dim)
    positions = torch.zeros(len(items), longest, 3, dtype=torch.int64)
    mask = torch.zeros(len(items), longest, dtype=torch.int64)
    for i, (p, q) in enumerate(items):
        pixels[i, : len(p)], positions[i, : len(p)], mask[i, : len(p)] = p, q.long(), 1
    return {"pixel_values": pixels, "positions": positions, "attention_mask": mask}
