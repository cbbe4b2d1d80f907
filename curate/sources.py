"""List a run's inputs: one row per image, video or OCR page, with a stable key and partition.

Listing only reads names and sizes; bytes are read later inside the stages. Keys are derived
from the source URI (readable stem + hash), so they are stable across reruns and machines, and
partitions are consecutive runs of the key-sorted list, so a rerun over the same inputs makes
the same partitions.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import PurePosixPath

from curate.config import SourceConfig
from curate.sources_shards import list_webdataset
from curate.sources_tables import TableError, list_table_source
from shards import storage

DEFAULT_EXTENSIONS = {
    "image": (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"),
    "video": (".mp4", ".mkv", ".mov", ".webm", ".avi", ".ts", ".h264", ".264", ".hevc", ".265"),
    "ocr": (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".jsonl"),
}


class SourceError(ValueError):
    """A source that cannot be listed (missing, empty, malformed JSONL)."""


def make_key(uri: str, identity: str | None = None) -> str:
    """A readable stem of ``uri`` plus a hash of ``identity`` (default: the URI itself), which must
    be unique across the run: a table row's is the table and row, since rows may share a video."""
    stem = re.sub(r"[^A-Za-z0-9_]+", "_", PurePosixPath(str(uri).replace("\\", "/")).stem)[:40].strip("_")
    digest = hashlib.sha1(str(uri if identity is None else identity).encode()).hexdigest()[:12]
    return f"{stem or 'item'}-{digest}"


def list_source(src: SourceConfig) -> tuple[list[dict], int]:
    """Inputs of one source, and how many files were passed over for their extension.

    Every input's ``meta["provenance"]`` says where it came from (source, file, shard member or
    table row, byte offset); an input the listing already knows to be unusable (a truncated tar
    member, a table row without a URI) carries ``error`` = [reason, detail] and is failed, not lost.
    """
    if src.format != "files":
        try:
            if src.format == "webdataset":
                return list_webdataset(src, make_key)
            return list_table_source(src, make_key)
        except (FileNotFoundError, TableError) as exc:
            raise SourceError(f"source {src.format} {src.uri}: {exc}") from None
    exts = tuple(e.lower() for e in (src.extensions or DEFAULT_EXTENSIONS[src.modality]))
    try:
        files = storage.list_files(src.uri)
    except FileNotFoundError as exc:
        raise SourceError(f"source {src.modality} {src.uri}: {exc}") from None
    chosen = [(uri, size) for uri, size in files if uri.lower().endswith(exts)]
    if not chosen:
        raise SourceError(
            f"source {src.modality} {src.uri}: no files ending in {', '.join(exts)} ({len(files)} others)"
        )
    names = {uri for uri, _ in files}
    items = []
    for uri, size in chosen:
        if src.modality == "ocr" and uri.lower().endswith(".jsonl"):
            items += _jsonl_pages(uri, src.uri)
            continue
        meta = {"bytes": size, "provenance": {"source": src.uri, "offset": 0}}
        if src.modality == "ocr":
            text_uri = uri.rsplit(".", 1)[0] + ".txt"
            meta["text_uri"] = text_uri if text_uri in names else None
        items.append({"key": make_key(uri), "uri": uri, "modality": src.modality, "meta": meta})
    return items, len(files) - len(chosen)


def _jsonl_pages(uri: str, source: str) -> list[dict]:
    """OCR rows ``{"image": path relative to the JSONL file or absolute URI, "text": "..."}``."""
    base = uri.rsplit("/", 1)[0] if storage.is_s3(uri) else str(PurePosixPath(uri).parent)
    items = []
    for n, line in enumerate(storage.read_bytes(uri).decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image, text = row["image"], row["text"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise SourceError(f"{uri}:{n}: expected {{'image': ..., 'text': ...}}: {exc}") from None
        image_uri = image if storage.is_s3(image) or image.startswith("/") else storage.join(base, image)
        provenance = {"source": source, "table": uri, "row": n}
        items.append(
            {
                "key": make_key(f"{uri}#{n}"),
                "uri": image_uri,
                "modality": "ocr",
                "meta": {"text": text, "provenance": provenance},
            }
        )
    return items


def list_inputs(sources, partition_size: int, partition_bytes: int = 0) -> tuple[list[dict], int]:
    """All inputs of all sources, key-sorted, each with its partition number.

    A partition closes at ``partition_size`` inputs or, when ``partition_bytes`` is set, once its
    inputs' file sizes reach it: a file's size is the cost predictor known before any decode (long
    or high-bitrate videos are big), so no partition, and so no task, dominates the run.
    """
    items, skipped = [], 0
    for src in sources:
        found, passed = list_source(src)
        items += found
        skipped += passed
    items.sort(key=lambda it: it["key"])
    seen = set()
    partition, count, size = 0, 0, 0
    for it in items:
        if it["key"] in seen:
            raise SourceError(f"input {it['uri']} is listed twice (two sources overlap)")
        seen.add(it["key"])
        cost = it["meta"].get("bytes", 0)
        if count and (count >= partition_size or (partition_bytes and size + cost > partition_bytes)):
            partition, count, size = partition + 1, 0, 0
        it["partition"] = partition
        count, size = count + 1, size + cost
    return items, skipped
