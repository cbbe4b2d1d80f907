"""Default per-modality transforms: one raw sample (field bytes, ``meta`` = parsed json) -> model inputs.

The reader calls ``transforms[modality](sample)`` and merges the returned dict into its output;
pass your own table (``functools.partial`` for parameters) to resize, augment or pack tokens.
"""

from __future__ import annotations

import functools
import io
import math
import re
import zlib

import numpy as np
import torch
from PIL import Image

from shards.format import MOSAIC_COLS

PATCH = 16  # the codec patch: one 4:2:0 JPEG MCU, so mosaic tiles never bleed into each other


@functools.lru_cache(maxsize=256)
def _npy_header(header: bytes) -> tuple:
    f = io.BytesIO(header)
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read(f)


def npy(data: bytes) -> np.ndarray:
    """``np.load`` for the small arrays of every sample, with numpy's header parse cached (it dominates)."""
    start = 10 + int.from_bytes(data[8:10], "little") if data[6] == 1 else 12 + int.from_bytes(data[8:12], "little")
    shape, fortran, dtype = _npy_header(bytes(data[:start]))
    if dtype.hasobject:
        raise ValueError("object arrays are not allowed in shards")
    array = np.frombuffer(data, dtype, count=math.prod(shape), offset=start)
    return array.reshape(shape, order="F" if fortran else "C")


def _rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.array(img.convert("RGB"))


def image_tensor(sample: dict) -> dict:
    """``image``: uint8 (3, H, W) at the curated resolution."""
    return {"image": torch.from_numpy(_rgb(sample["jpg"] if "jpg" in sample else sample["png"])).permute(2, 0, 1)}


def unpack_mosaic(mosaic: np.ndarray, k: int) -> np.ndarray:
    """(rows*16, MOSAIC_COLS*16, 3) mosaic -> (k, 3, 16, 16) patches, row-major as the writer packed them."""
    rows, cols = mosaic.shape[0] // PATCH, mosaic.shape[1] // PATCH
    if cols != MOSAIC_COLS or rows * cols < k:
        raise ValueError(f"mosaic {mosaic.shape[:2]} cannot hold {k} patches of {PATCH}px, {MOSAIC_COLS} per row")
    grid = mosaic[: rows * PATCH].reshape(rows, PATCH, cols, PATCH, 3).transpose(0, 2, 4, 1, 3)
    return grid.reshape(rows * cols, 3, PATCH, PATCH)[:k]


def video_tokens(sample: dict) -> dict:
    """``patches``: uint8 (K, 3, 16, 16) codec tokens, ``pos``: int64 (K, 3) (t, h, w) positions."""
    pos = npy(sample["pos.npy"])
    if pos.dtype != np.int16 or pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"pos.npy must be int16 (K, 3), got {pos.dtype} {pos.shape}")
    patches = unpack_mosaic(_rgb(sample["patches.jpg"]), len(pos))
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
