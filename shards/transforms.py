"""Default per-modality transforms: one raw sample (field bytes, ``meta`` = parsed json) -> model inputs.

The reader calls ``transforms[modality](sample)`` and merges the returned dict into its output;
pass your own table (``functools.partial`` for parameters) to resize, augment or pack tokens.
"""

from __future__ import annotations

import re
import zlib

import numpy as np
import torch

from shards import fields


def image_tensor(sample: dict) -> dict:
    """``image``: uint8 (3, H, W) at the curated resolution."""
    return {
        "image": torch.from_numpy(fields.image(sample["jpg"] if "jpg" in sample else sample["png"])).permute(2, 0, 1)
    }


def video_tokens(sample: dict) -> dict:
    """``patches``: uint8 (K, 3, 16, 16) codec tokens, ``pos``: int64 (K, 3) (t, h, w) positions."""
    pos = fields.positions(sample["pos.npy"])
    patches = fields.mosaic(sample["patches.jpg"], len(pos)).transpose(0, 3, 1, 2)
    return {"patches": torch.from_numpy(np.ascontiguousarray(patches)), "pos": torch.from_numpy(pos.astype(np.int64))}


def word_ids(text: str, vocab_size: int = 1 << 16) -> torch.Tensor:
    """Lower-cased words hashed (crc32, stable across processes) into ``vocab_size`` buckets."""
    words = re.findall(r"\w+", text.lower())
    return torch.tensor([zlib.crc32(w.encode()) % vocab_size for w in words], dtype=torch.int64)


def ocr_crop(sample: dict, vocab_size: int = 1 << 16) -> dict:
    """``image``: uint8 (3, H, W) page crop, ``words``: int64 word ids of its text, ``text``: the text."""
    text = sample["txt"].decode("utf-8")
    return {**image_tensor(sample), "words": word_ids(text, vocab_size), "text": text}


DEFAULT_TRANSFORMS = {"image": image_tensor, "video": video_tokens, "ocr": ocr_crop}
