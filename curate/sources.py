"""List a run's inputs: one row per image, video or OCR page, with a stable key and partition.

Listing only reads names and sizes (and, for shard sets and tables, headers, captions and rows);
media bytes are read later inside the stages. A source splits into units (a folder, a tar of a
shard set, a table or a parquet row group) that list independently, in Ray tasks in a run (see
``curate.listing``). Keys are derived from the source URI (readable stem + hash), so they are stable
across reruns and machines, and partitions are consecutive runs of each unit's key-sorted inputs,
numbered in unit order, so a rerun over the same inputs makes the same partitions.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import PurePosixPath

from curate.config import SourceConfig
from curate.sources_shards import shard_units, tar_items
from curate.sources_tables import TableError, table_items, table_units
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
    """Inputs of a folder source (``format = "files"``), and how many files were passed over for
    their extension."""
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


def source_units(src: SourceConfig) -> tuple[list[dict], int]:
    """A source's listing units (what one listing task reads), and the files passed over here.

    A folder source is one unit (its task lists the folder); a shard set has a unit per tar, a
    table source one per table or parquet row group. Units are JSON, in a fixed order.
    """
    try:
        if src.format == "webdataset":
            return shard_units(src)
        if src.format != "files":
            return table_units(src)
    except (FileNotFoundError, TableError) as exc:
        raise SourceError(f"source {src.format} {src.uri}: {exc}") from None
    return [{"kind": "folder", "uri": src.uri}], 0


def list_unit(src: SourceConfig, unit: dict) -> tuple[list[dict], int]:
    """The inputs of one unit, and the files it passed over.

    Every input's ``meta["provenance"]`` says where it came from (source, file, shard member or
    table row, byte offset); an input the listing already knows to be unusable (a truncated tar
    member, a table row without a URI) carries ``error`` = [reason, detail] and is failed, not lost.
    """
    try:
        if unit["kind"] == "tar":
            return tar_items(src, unit, make_key), 0
        if unit["kind"] == "table":
            return table_items(src, unit, make_key), 0
    except TableError as exc:
        raise SourceError(f"source {src.format} {src.uri}: {exc}") from None
    return list_source(src)


def plan_units(sources) -> tuple[list[tuple[int, dict]], int]:
    """``(source index, unit)`` for every unit of every source, and the files passed over; two
    sources naming the same file or folder, or one inside the other, are an error (their inputs
    would be listed twice)."""
    units, skipped, owner = [], 0, {}
    for i, src in enumerate(sources):
        found, passed = source_units(src)
        skipped += passed
        for unit in found:
            if owner.setdefault(unit["uri"], i) != i:
                raise SourceError(f"input {unit['uri']} is listed twice (two sources overlap)")
            units.append((i, unit))
    folders = [(i, u["uri"].rstrip("/") + "/") for i, u in units if u["kind"] == "folder"]
    for i, unit in units:
        inside = next((f for j, f in folders if j != i and unit["uri"].startswith(f)), None)
        if inside:
            raise SourceError(f"input {unit['uri']} is listed twice (two sources overlap: it is inside {inside})")
    return units, skipped


def assign_partitions(items: list[dict], first: int, partition_size: int, partition_bytes: int = 0) -> int:
    """Sort one unit's inputs by key and number their partitions from ``first``; return the next free one.

    A partition closes at ``partition_size`` inputs or, when ``partition_bytes`` is set, once its
    inputs' file sizes reach it: a file's size is the cost predictor known before any decode (long
    or high-bitrate videos are big), so no partition, and so no task, dominates the run. Partitions
    never span units, so each unit's listing task forms its own.
    """
    items.sort(key=lambda it: it["key"])
    partition, count, size = first, 0, 0
    for i, it in enumerate(items):
        if i and it["key"] == items[i - 1]["key"]:
            raise SourceError(f"input {it['uri']} is listed twice (key {it['key']})")
        cost = it["meta"].get("bytes", 0)
        if count and (count >= partition_size or (partition_bytes and size + cost > partition_bytes)):
            partition, count, size = partition + 1, 0, 0
        it["partition"] = partition
        count, size = count + 1, size + cost
    return partition + 1 if items else first


def list_inputs(sources, partition_size: int, partition_bytes: int = 0) -> tuple[list[dict], int]:
    """All inputs of all sources in this process, unit by unit, each with its partition number
    (the partitions ``curate.listing`` forms in Ray tasks); and the files passed over."""
    units, skipped = plan_units(sources)
    items, partition = [], 0
    for i, unit in units:
        found, passed = list_unit(sources[i], unit)
        partition = assign_partitions(found, partition, partition_size, partition_bytes)
        items += found
        skipped += passed
    return items, skipped
