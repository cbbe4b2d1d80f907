"""Codec tokens as shard bytes: the patch mosaic JPEG and whole frames (``shards.fields`` reads both back).

Patches are cut from the decoded Y/U/V planes, remapped to JPEG's full-range BT.601 YCbCr and
written as a 4:2:0 JPEG, so no RGB round trip runs and each 16x16 patch is exactly one JPEG
MCU: nothing bleeds between neighbouring patches of the mosaic.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from shards.format import MOSAIC_COLS


def gather(y: np.ndarray, u: np.ndarray, v: np.ndarray, pos: np.ndarray, patch: int) -> np.ndarray:
    """(K, patch, patch, 3) YCbCr patches at ``pos``; chroma is upsampled by repetition (lossless for 4:2:0)."""
    t, h, w = pos[:, 0].astype(np.intp), pos[:, 1].astype(np.intp), pos[:, 2].astype(np.intp)
    p, c = patch, patch // 2
    rows = h[:, None] * p + np.arange(p)
    cols = w[:, None] * p + np.arange(p)
    luma = y[t[:, None, None], rows[:, :, None], cols[:, None, :]]
    crow, ccol = h[:, None] * c + np.arange(c), w[:, None] * c + np.arange(c)
    cb = u[t[:, None, None], crow[:, :, None], ccol[:, None, :]]
    cr = v[t[:, None, None], crow[:, :, None], ccol[:, None, :]]
    chroma = np.stack([cb, cr], axis=-1).repeat(2, axis=1).repeat(2, axis=2)
    return np.concatenate([luma[..., None], chroma], axis=-1)


def mosaic(patches: np.ndarray, cols: int = MOSAIC_COLS) -> np.ndarray:
    """Pack (K, p, p, 3) patches row-major, ``cols`` per row; empty cells are mid-grey."""
    k, p = patches.shape[:2]
    rows = -(-k // cols)
    grid = np.full((rows * cols, p, p, 3), 128, np.uint8)
    grid[:k] = patches
    return grid.reshape(rows, cols, p, p, 3).transpose(0, 2, 1, 3, 4).reshape(rows * p, cols * p, 3)


_BT601 = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
_BT709 = np.array([[0.2126, 0.7152, 0.0722], [-0.114572, -0.385428, 0.5], [0.5, -0.454153, -0.045847]])


def jpeg_ycbcr(ycbcr: np.ndarray, full_range: bool, bt709: bool) -> np.ndarray:
    """Video YCbCr (limited or full range, BT.601 or BT.709) -> JPEG's full-range BT.601 YCbCr."""
    if full_range and not bt709:
        return ycbcr
    x = ycbcr.astype(np.float32) - np.array([0, 128, 128], np.float32)
    if not full_range:
        x = (x - np.array([16, 0, 0], np.float32)) * np.array([255 / 219, 255 / 224, 255 / 224], np.float32)
    if bt709:
        x = x @ (_BT601 @ np.linalg.inv(_BT709)).T.astype(np.float32)
    return np.clip(x + np.array([0, 128, 128], np.float32) + 0.5, 0, 255).astype(np.uint8)


def encode_jpeg(ycbcr: np.ndarray, quality: int) -> bytes:
    """Encode an (H, W, 3) full-range YCbCr array as a 4:2:0 JPEG without colour conversion."""
    image = Image.frombytes("YCbCr", (ycbcr.shape[1], ycbcr.shape[0]), np.ascontiguousarray(ycbcr).tobytes())
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, subsampling="4:2:0")
    return buf.getvalue()


def frames_ycbcr(y: np.ndarray, u: np.ndarray, v: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Whole frames ``ids`` stacked vertically as one (n*H, W, 3) YCbCr picture."""
    chroma = np.stack([u[ids], v[ids]], axis=-1).repeat(2, axis=1).repeat(2, axis=2)
    return np.concatenate([y[ids][..., None], chroma], axis=-1).reshape(-1, y.shape[2], 3)


def to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    """Full-range BT.601 YCbCr -> RGB, the JPEG convention (PIL's converter)."""
    flat = ycbcr.reshape(-1, 3)
    image = Image.frombytes("YCbCr", (flat.shape[0], 1), np.ascontiguousarray(flat).tobytes())
    return np.asarray(image.convert("RGB")).reshape(ycbcr.shape)
