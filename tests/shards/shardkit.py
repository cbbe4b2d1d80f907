"""Shard sets with known content (real JPEGs, real pos.npy), so tests check sample identity.

Every sample's pixels, positions, text and labels are a function of its key, and ``expected(key)``
recomputes them for comparison with what the reader returns.
"""

from __future__ import annotations

import io
import zlib

import numpy as np
from PIL import Image

from shards import format as fmt
from shards.writer import write_index, write_shard

K = 40  # codec patches per clip: two mosaic rows


def _jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _seed(key: str) -> int:
    return zlib.crc32(key.encode())


def expected(key: str) -> dict:
    """What a sample holds: flat colours, so JPEG round trips stay within a few levels."""
    s = _seed(key)
    colour = np.array([s % 200, (s >> 8) % 200, (s >> 16) % 200], np.uint8) + 20
    patch_colours = (np.arange(K)[:, None] * np.array([5, 3, 1]) + colour) % 230 + 10
    pos = np.stack([np.arange(K) // 8, np.arange(K) % 8, (np.arange(K) + s) % 14], 1).astype(np.int16)
    return {
        "colour": colour,
        "patch_colours": patch_colours.astype(np.uint8),
        "pos": pos,
        "text": f"word{s % 97} hello {key}",
        "cls": np.array([s % 1000, s % 7], np.int32),
    }


def make_sample(key: str, modality: str) -> dict[str, bytes]:
    e = expected(key)
    out = {"__key__": key, "json": fmt.encode_json({"modality": modality}), "cls.npy": fmt.encode_npy(e["cls"])}
    if modality in ("image", "ocr"):
        out["jpg"] = _jpeg(np.broadcast_to(e["colour"], (24, 32, 3)).copy())
    if modality == "ocr":
        out["txt"] = e["text"].encode()
    if modality == "video":
        rows = -(-K // fmt.MOSAIC_COLS)
        mosaic = np.zeros((rows * fmt.MOSAIC_COLS, 16, 16, 3), np.uint8)
        mosaic[:K] = e["patch_colours"][:, None, None, :]
        mosaic = mosaic.reshape(rows, fmt.MOSAIC_COLS, 16, 16, 3).transpose(0, 2, 1, 3, 4).reshape(rows * 16, -1, 3)
        out["patches.jpg"] = _jpeg(mosaic)
        out["pos.npy"] = fmt.encode_npy(e["pos"])
    return out


def write_set(folder, modality: str, shards: int, per_shard: int, set_name: str | None = None) -> list[str]:
    """A published set of ``shards`` x ``per_shard`` samples; returns every key."""
    set_name = set_name or f"t_{modality}"
    infos, keys = [], []
    for i in range(shards):
        ks = [f"{modality}{i:02d}_{j:03d}" for j in range(per_shard)]
        infos.append(
            write_shard([make_sample(k, modality) for k in ks], f"{folder}/{fmt.shard_name(set_name, 'v1', i)}")
        )
        keys += ks
    write_index(str(folder), set_name, "v1", infos, {"modality": modality})
    return keys
