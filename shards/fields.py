"""One decoder per shard field: a sample member's bytes -> validated NumPy arrays.

The trainer (``train.data``, and through it the probe), the reader's default transforms, the concept
embedder and the run report all read the same fields. Each used to unpack the mosaic, split the
frames and check the arrays its own way, and the copies drifted apart (one checked the mosaic's
width, one cut frames at any height). Here each field of the contract in ``shards.format`` has one
decoder that checks what the contract says, so a malformed sample fails the same way everywhere.
NumPy and PIL only: torch conversions stay with the callers.
"""

from __future__ import annotations

import functools
import io
import json
import math

import numpy as np
from PIL import Image

from shards.format import FIELDS, MAX_WORDS, MODALITIES, MOSAIC_COLS, REQUIRED

PATCH = 16  # the codec patch: one 4:2:0 JPEG MCU, so mosaic tiles never bleed into each other
LABEL_FIELDS = ("cls", "words")


@functools.lru_cache(maxsize=256)
def _npy_header(header: bytes) -> tuple:
    f = io.BytesIO(header)
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read(f)


def npy(data: bytes) -> np.ndarray:
    """``np.load`` for the small arrays of every sample, with numpy's header parse cached (it dominates).

    The array is a read-only view of ``data``: copy it (``astype``) to write.
    """
    if bytes(data[:6]) != b"\x93NUMPY" or len(data) < 12:
        raise ValueError("not a .npy array (no NUMPY magic)")
    start = 10 + int.from_bytes(data[8:10], "little") if data[6] == 1 else 12 + int.from_bytes(data[8:12], "little")
    shape, fortran, dtype = _npy_header(bytes(data[:start]))
    if dtype.hasobject:
        raise ValueError("object arrays are not allowed in shards")
    array = np.frombuffer(data, dtype, count=math.prod(shape), offset=start)
    return array.reshape(shape, order="F" if fortran else "C")


def image(data: bytes) -> np.ndarray:
    """``jpg`` / ``png`` / ``crop.jpg`` (or any picture) -> uint8 (H, W, 3) RGB, writable."""
    with Image.open(io.BytesIO(data)) as img:
        return np.array(img.convert("RGB"))


def mosaic(data: bytes, k: int, patch: int = PATCH) -> np.ndarray:
    """``patches.jpg`` and K (the length of ``pos.npy``) -> uint8 (K, patch, patch, 3), in ``pos.npy`` order.

    The writer packs the patches row-major, ``MOSAIC_COLS`` per row, grey cells after the last.
    """
    grid = image(data)
    rows, cols = grid.shape[0] // patch, grid.shape[1] // patch
    if grid.shape[1] != MOSAIC_COLS * patch:
        raise ValueError(
            f"patches.jpg is {grid.shape[1]} px wide, not {MOSAIC_COLS} patches of {patch} px "
            f"({MOSAIC_COLS * patch} px): not a codec mosaic of this contract"
        )
    if rows * cols < k:
        raise ValueError(
            f"patches.jpg ({grid.shape[0]}x{grid.shape[1]}) holds {rows * cols} patches of {patch} px, "
            f"but pos.npy has {k}"
        )
    cells = grid[: rows * patch].reshape(rows, patch, cols, patch, 3).transpose(0, 2, 1, 3, 4)
    return cells.reshape(rows * cols, patch, patch, 3)[:k]


def frames(data: bytes, meta: dict) -> tuple[list[np.ndarray], list]:
    """``frames.jpg`` and the sample's json -> its whole frames, uint8 (H, W, 3) each in time order, and their ids."""
    ids = list((meta.get("frames") or {}).get("ids") or [])
    if not ids:
        raise ValueError('json["frames"]["ids"] is missing, so frames.jpg cannot be split into frames')
    stacked = image(data)
    if stacked.shape[0] % len(ids):
        raise ValueError(f"frames.jpg height {stacked.shape[0]} is not a multiple of its {len(ids)} frames")
    return list(stacked.reshape(len(ids), -1, *stacked.shape[1:])), ids


def positions(data: bytes) -> np.ndarray:
    """``pos.npy`` -> int16 (K, 3): the (t, h, w) grid position of each mosaic patch."""
    pos = npy(data)
    if pos.dtype != np.int16 or pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"pos.npy must be int16 (K, 3), got {pos.dtype} {pos.shape}")
    return pos


def labels(data: bytes, field: str = "cls") -> np.ndarray:
    """``cls.npy`` (top-k concept ids) or ``words.npy`` (OCR word ids) -> int32 (n,); range checks need a head."""
    if field not in LABEL_FIELDS:
        raise ValueError(f"label field {field!r} is not one of {LABEL_FIELDS}")
    ids = npy(data)
    if ids.dtype != np.int32 or ids.ndim != 1:
        raise ValueError(f"{field}.npy must be int32 (n,), got {ids.dtype} {ids.shape}")
    if field == "words" and len(ids) > MAX_WORDS:
        raise ValueError(f"words.npy holds {len(ids)} word ids, more than the contract's {MAX_WORDS}")
    return ids


def words(data: bytes) -> np.ndarray:
    """``words.npy`` -> int32 (n,) OCR word ids, 0 to ``MAX_WORDS`` (none: no readable text, never padded)."""
    return labels(data, "words")


def check_sample(sample: dict[str, bytes]) -> dict:
    """Validate one sample's fields against the contract (through the same decoders); return its json."""
    unknown = set(sample) - set(FIELDS) - {"__key__"}
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}; the contract has {list(FIELDS)}")
    meta = json.loads(sample["json"])
    modality = meta.get("modality")
    if modality not in MODALITIES:
        raise ValueError(f"json.modality {modality!r} is not one of {MODALITIES}")
    missing = [f for f in REQUIRED[modality] if f not in sample]
    if missing:
        raise ValueError(f"{modality} sample lacks required field(s) {missing}")
    if "pos.npy" in sample:
        positions(sample["pos.npy"])
    for name in LABEL_FIELDS:
        if f"{name}.npy" in sample:
            labels(sample[f"{name}.npy"], name)
    return meta
