"""The shard contract shared by the curation writer and the training reader.

A shard set is ``{set}-{version}-{index:06d}.tar`` files plus ``index.json`` in one folder.
One sample per key; each field is one tar member ``{key}.{field}``:

========== ==============================================================================
``json``   modality, source URI and hash, sizes, codec facts, saliency stats, dedup group,
           concept bank version (always present); ``provenance`` (the source, and the shard and
           byte offset, or the table, row and byte offset, the sample came from); ``source_meta``
           (the source's own metadata: an img2dataset sample's ``.json``, a table's kept columns)
``jpg``    image or OCR page at the curated resolution, or an OCR crop: a sample ``{page}-r{n}`` of
           its own, a training-size window of the page at reading resolution
``txt``    UTF-8 text: for OCR pages the transcript (the text *in* the picture, which OCR labels and
           ``words.npy`` are built from); for images and video clips the caption (text *about* the
           picture, from the source: img2dataset's ``.txt`` or a table's caption column), never
           tokenised into labels. Absent where the source has no caption.
``patches.jpg``  video codec tokens: the K selected 16x16 patches packed as a mosaic, row-major,
           ``MOSAIC_COLS`` patches per row, in the order of ``pos.npy``
``pos.npy``  int16 array (K, 3) of (t, h, w) grid positions of those patches
``frames.jpg``   a few whole frames stacked vertically (frame ids in ``json["frames"]["ids"]``)
``cls.npy``  int32 top-k concept ids (or a sidecar label set keyed by sample key)
``words.npy``  int32 OCR word ids, 0 to 100 of them (empty: no readable text, never padded)
``crop.jpg``   OCR: the text-dense region at the training resolution (sets written before crops
           became samples of their own)
========== ==============================================================================

Each field's reader (decode and check) is in ``shards.fields``.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np

FORMAT_VERSION = 1
MODALITIES = ("image", "video", "ocr")
FIELDS = ("json", "jpg", "png", "txt", "patches.jpg", "pos.npy", "frames.jpg", "cls.npy", "words.npy", "crop.jpg")
MAX_WORDS = 100
REQUIRED = {"image": ("json", "jpg"), "video": ("json",), "ocr": ("json", "jpg", "txt")}
MOSAIC_COLS = 32
INDEX_NAME = "index.json"
_SHARD = re.compile(r"^(?P<set>.+)-(?P<version>v\d+)-(?P<index>\d{6})\.tar$")
_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def shard_name(set_name: str, version: str, index: int) -> str:
    if not re.fullmatch(r"v\d+", version):
        raise ValueError(f"shard version must look like v1, got {version!r}")
    return f"{set_name}-{version}-{index:06d}.tar"


def parse_shard_name(name: str) -> dict | None:
    m = _SHARD.match(name.rsplit("/", 1)[-1])
    return None if m is None else {"set": m["set"], "version": m["version"], "index": int(m["index"])}


def check_key(key: str) -> str:
    """WebDataset splits member names at the first dot, so keys hold no dots or slashes."""
    if not _KEY.match(key):
        raise ValueError(f"sample key {key!r} must match [A-Za-z0-9_-]+")
    return key


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    """The inverse of ``encode_npy`` (a writable array); shard readers use ``shards.fields``, which also checks."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_json(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
