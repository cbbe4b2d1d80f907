"""List a run's inputs: one row per image, video or OCR page, with a stable key and partition.

Listing only reads names and sizes; bytes are read later inside the stages. Keys are derived
from the source URI (readable stem + hash), so they are stable across reruns and machines, and
partitions are consecutive runs of the key-sorted list, so a rerun over the same inputs makes
the same partitions.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from pathlib import PurePosixPath

from PIL import Image

from curate.config import SourceConfig
from shards import storage

_PILLOW_PLUGINS = (".avif", ".heic", ".heif", ".jxl")  # taken where this Pillow build reads them
DEFAULT_EXTENSIONS = {
    "image": (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"),
    # raw elementary streams (.h264, .hevc) carry no timestamps to sample clips by: listed as passed over
    "video": (".mp4", ".mkv", ".mov", ".webm", ".avi", ".ts"),
    "ocr": (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".jsonl"),
}


def _pillow_reads(ext: str) -> bool:
    Image.init()
    return Image.registered_extensions().get(ext) in Image.OPEN


def default_extensions(modality: str) -> tuple[str, ...]:
    """The modality's file endings; images also take the formats this Pillow build can open."""
    extra = tuple(e for e in _PILLOW_PLUGINS if _pillow_reads(e)) if modality == "image" else ()
    return DEFAULT_EXTENSIONS[modality] + extra


class SourceError(ValueError):
    """A source that cannot be listed (missing, empty, malformed JSONL)."""


def make_key(uri: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_]+", "_", PurePosixPath(str(uri).replace("\\", "/")).stem)[:40].strip("_")
    digest = hashlib.sha1(str(uri).encode()).hexdigest()[:12]
    return f"{stem or 'item'}-{digest}"


def list_source(src: SourceConfig) -> tuple[list[dict], Counter]:
    """Inputs of one source, and the files passed over, counted by extension.

    In an image source a file without an extension is an input (decoded by its content, so a
    JPEG saved without ``.jpg`` is not lost); OCR transcripts (``.txt`` beside a page) are used,
    not passed over.
    """
    exts = tuple(e.lower() for e in (src.extensions or default_extensions(src.modality)))
    try:
        files = storage.list_files(src.uri)
    except FileNotFoundError as exc:
        raise SourceError(f"source {src.modality} {src.uri}: {exc}") from None
    by_content = src.modality == "image" and not src.extensions
    chosen = [(uri, size) for uri, size in files if uri.lower().endswith(exts) or (by_content and not _suffix(uri))]
    if not chosen:
        raise SourceError(
            f"source {src.modality} {src.uri}: no files ending in {', '.join(exts)} ({len(files)} others)"
        )
    names = {uri for uri, _ in files}
    used = {uri for uri, _ in chosen}
    items = []
    for uri, size in chosen:
        if not _utf8(uri):
            items.append(_unreadable_name(uri, src.modality, size))
            continue
        if src.modality == "ocr" and uri.lower().endswith(".jsonl"):
            items += _jsonl_pages(uri)
            continue
        meta = {"bytes": size}
        if src.modality == "ocr":
            text_uri = uri.rsplit(".", 1)[0] + ".txt"
            meta["text_uri"] = text_uri if text_uri in names else None
            used.add(text_uri)
        items.append({"key": make_key(uri), "uri": uri, "modality": src.modality, "meta": meta})
    return items, Counter(_suffix(uri) or "(none)" for uri, _ in files if uri not in used)


def _suffix(uri: str) -> str:
    return PurePosixPath(uri.replace("\\", "/")).suffix.lower()


def _utf8(uri: str) -> bool:
    try:
        uri.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unreadable_name(uri: str, modality: str, size: int) -> dict:
    """A file whose name is not valid UTF-8: an input that fails at once, its name shown escaped."""
    shown = os.fsencode(uri).decode("utf-8", "backslashreplace")
    error = ("source/name_not_utf8", f"{shown}: the file name is not valid UTF-8; rename the file to curate it")
    return {"key": make_key(shown), "uri": shown, "modality": modality, "meta": {"bytes": size}, "error": error}


def _jsonl_pages(uri: str) -> list[dict]:
    """OCR rows ``{"image": path relative to the JSONL file or absolute URI, "text": "..."}``.

    A line that is not such a row is an input of its own that fails (``uri#line``), not the source.
    """
    base = uri.rsplit("/", 1)[0] if storage.is_s3(uri) else str(PurePosixPath(uri).parent)
    items = []
    for n, line in enumerate(storage.read_bytes(uri).splitlines(), 1):
        if not line.strip():
            continue
        key = make_key(f"{uri}#{n}")
        try:
            row = json.loads(line.decode("utf-8"))
            image, text = row["image"], row["text"]
            if not isinstance(image, str) or not isinstance(text, str):
                raise TypeError("'image' and 'text' must be strings")
        except (ValueError, KeyError, TypeError) as exc:  # ValueError: not UTF-8, or not JSON
            error = ("source/bad_jsonl_row", f"{uri}:{n}: expected {{'image': ..., 'text': ...}}: {exc!r}")
            items.append({"key": key, "uri": f"{uri}#{n}", "modality": "ocr", "meta": {}, "error": error})
            continue
        image_uri = image if storage.is_s3(image) or image.startswith("/") else storage.join(base, image)
        items.append({"key": key, "uri": image_uri, "modality": "ocr", "meta": {"text": text}})
    return items


def list_inputs(sources, partition_size: int, partition_bytes: int = 0) -> tuple[list[dict], Counter]:
    """All inputs of all sources, key-sorted, each with its partition number.

    A partition closes at ``partition_size`` inputs or, when ``partition_bytes`` is set, once its
    inputs' file sizes reach it: a file's size is the cost predictor known before any decode (long
    or high-bitrate videos are big), so no partition, and so no task, dominates the run.
    """
    items, skipped = [], Counter()
    for src in sources:
        found, passed = list_source(src)
        items += found
        skipped += passed
    items.sort(key=lambda it: it["key"])
    check_unique_keys(items)
    partition, count, size = 0, 0, 0
    for it in items:
        cost = it["meta"].get("bytes", 0)
        if count and (count >= partition_size or (partition_bytes and size + cost > partition_bytes)):
            partition, count, size = partition + 1, 0, 0
        it["partition"] = partition
        count, size = count + 1, size + cost
    return items, skipped


def check_unique_keys(items: list[dict]) -> None:
    """Key-sorted inputs have distinct keys: the same input twice is an overlap of sources; two
    different inputs with one key are a collision of the key's hash, said as such."""
    for a, b in zip(items, items[1:], strict=False):
        if a["key"] != b["key"]:
            continue
        if a["uri"] == b["uri"]:
            raise SourceError(f"input {a['uri']} is listed twice (two sources overlap)")
        raise SourceError(
            f"inputs {a['uri']} and {b['uri']} have the same key {a['key']} (a collision of its 48-bit hash): "
            "rename one of them"
        )
