"""List a run's inputs: one row per image, video or OCR page (a PDF's pages too), with a stable key and partition.

Listing only reads names and sizes (and, for shard sets, tables and PDFs, headers, captions, rows
and text layers);
media bytes are read later inside the stages. A source splits into units (a folder, a tar of a
shard set, a table or a parquet row group) that list independently, in Ray tasks in a run (see
``curate.listing``). Keys are derived from the source URI (readable stem + hash), so they are stable
across reruns and machines, and partitions are consecutive runs of each unit's key-sorted inputs,
numbered in unit order, so a rerun over the same inputs makes the same partitions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path, PurePosixPath

from PIL import Image

from curate.config import SourceConfig
from curate.sources_pdf import pdf_items, pdf_units
from curate.sources_shards import shard_units, tar_items
from curate.sources_tables import TableError, table_items, table_units
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


def make_key(uri: str, identity: str | None = None) -> str:
    """A readable stem of ``uri`` plus a hash of ``identity`` (default: the URI itself), which must
    be unique across the run: a table row's is the table and row, since rows may share a video."""
    stem = re.sub(r"[^A-Za-z0-9_]+", "_", PurePosixPath(str(uri).replace("\\", "/")).stem)[:40].strip("_")
    digest = hashlib.sha1(str(uri if identity is None else identity).encode()).hexdigest()[:12]
    return f"{stem or 'item'}-{digest}"


def anchor(src: SourceConfig, base: str) -> str | None:
    """The folder a source's relative path resolves against: ``base``, the driver's working directory
    (workers have their own); None for an absolute path or an S3 URI."""
    return None if storage.is_s3(src.uri) or os.path.isabs(src.uri) else base


def located(src: SourceConfig, base: str | None) -> SourceConfig:
    """``src`` with its path absolute (see :func:`anchor`): what every task reads."""
    return src if base is None else dataclasses.replace(src, uri=str(Path(base, src.uri)))


def as_written(path: str, base: str | None) -> str:
    """A listed path as the manifest names it (``base`` stripped from it): what keys hash and
    provenance shows, so they stay what they were before reads became absolute, and do not change
    with where the corpus lies."""
    prefix = base.rstrip("/") + "/" if base else None
    return path[len(prefix) :] if prefix and path.startswith(prefix) else path


def list_source(src: SourceConfig, make_key=make_key) -> tuple[list[dict], Counter]:
    """Inputs of a folder source (``format = "files"``), and the files passed over, counted by extension.

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
    chosen = [
        (uri, size) for uri, size in files if uri.lower().endswith(exts) or (by_content and not storage.suffix(uri))
    ]
    if not chosen:
        raise SourceError(
            f"source {src.modality} {src.uri}: no files ending in {', '.join(exts)} ({len(files)} others)"
        )
    names = {uri for uri, _ in files}
    used = {uri for uri, _ in chosen}
    items = []
    for uri, size in chosen:
        if not _utf8(uri):
            items.append(_unreadable_name(uri, src.modality, size, make_key))
            continue
        if src.modality == "ocr" and uri.lower().endswith(".jsonl"):
            items += _jsonl_pages(uri, src.uri, make_key)
            continue
        meta = {"bytes": size, "provenance": {"source": src.uri, "offset": 0}}
        if src.modality == "ocr":
            text_uri = uri.rsplit(".", 1)[0] + ".txt"
            meta["text_uri"] = text_uri if text_uri in names else None
            used.add(text_uri)
        items.append({"key": make_key(uri), "uri": uri, "modality": src.modality, "meta": meta})
    return items, storage.by_extension(uri for uri, _ in files if uri not in used)


def _utf8(uri: str) -> bool:
    try:
        uri.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unreadable_name(uri: str, modality: str, size: int, make_key) -> dict:
    """A file whose name is not valid UTF-8: an input that fails at once, its name shown escaped."""
    shown = os.fsencode(uri).decode("utf-8", "backslashreplace")
    error = ("source/name_not_utf8", f"{shown}: the file name is not valid UTF-8; rename the file to curate it")
    return {"key": make_key(shown), "uri": shown, "modality": modality, "meta": {"bytes": size}, "error": error}


def _jsonl_pages(uri: str, source: str, make_key) -> list[dict]:
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
        provenance = {"source": source, "table": uri, "row": n}
        items.append(
            {
                "key": key,
                "uri": image_uri,
                "modality": "ocr",
                "meta": {"text": text, "provenance": provenance},
            }
        )
    return items


def source_units(src: SourceConfig) -> tuple[list[dict], Counter]:
    """A source's listing units (what one listing task reads), and the files passed over here.

    A folder source is one unit (its task lists the folder); a shard set has a unit per tar, a PDF
    source one per PDF, a table source one per table or parquet row group. Units are JSON, in a
    fixed order.
    """
    try:
        if src.format == "webdataset":
            return shard_units(src)
        if src.format == "pdf":
            return pdf_units(src)
        if src.format != "files":
            return table_units(src)
    except (FileNotFoundError, TableError) as exc:
        raise SourceError(f"source {src.format} {src.uri}: {exc}") from None
    if not storage.is_s3(src.uri) and not os.path.exists(src.uri):  # checked here, on the driver, before tasks
        raise SourceError(f"source {src.modality} {src.uri}: no such file or folder")
    return [{"kind": "folder", "uri": src.uri}], Counter()


def list_unit(src: SourceConfig, unit: dict, base: str | None = None) -> tuple[list[dict], Counter]:
    """The inputs of one unit of ``located(src, base)``, and the files it passed over.

    Every input's ``meta["provenance"]`` says where it came from (source, file, shard member or
    table row, byte offset); an input the listing already knows to be unusable (a truncated tar
    member, a table row without a URI) carries ``error`` = [reason, detail] and is failed, not lost.
    Its ``uri`` is what tasks read (absolute); keys and provenance name paths as the manifest does
    (:func:`as_written`), and so does ``meta["uri_as_written"]`` where that differs from ``uri``.
    """
    read = located(src, base)

    def key(uri: str, identity: str | None = None) -> str:
        return make_key(as_written(uri, base), None if identity is None else as_written(identity, base))

    try:
        if unit["kind"] == "tar":
            items, passed = tar_items(read, unit, key), Counter()
        elif unit["kind"] == "pdf":
            items, passed = pdf_items(read, unit, key), Counter()
        elif unit["kind"] == "table":
            items, passed = table_items(read, unit, key), Counter()
        else:
            items, passed = list_source(read, key)
    except TableError as exc:
        raise SourceError(f"source {src.format} {src.uri}: {exc}") from None
    if base is not None:
        for it in items:
            provenance = it["meta"].get("provenance", {})
            for field in ("shard", "table", "file"):
                if field in provenance:
                    provenance[field] = as_written(provenance[field], base)
            if "source" in provenance:
                provenance["source"] = src.uri
            if as_written(it["uri"], base) != it["uri"]:
                it["meta"]["uri_as_written"] = as_written(it["uri"], base)
    return items, passed


def plan_units(sources, bases) -> tuple[list[tuple[int, dict]], Counter]:
    """``(source index, unit)`` for every unit of every source (``located(source, base)``, so units
    name absolute paths), and the files passed over; two sources naming the same file or folder, or
    one inside the other, are an error (their inputs would be listed twice)."""
    units, skipped, owner = [], Counter(), {}
    for i, (src, base) in enumerate(zip(sources, bases, strict=True)):
        found, passed = source_units(located(src, base))
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
    items.sort(key=lambda it: it["key"])  # stable: inputs sharing a key keep their listing order
    partition, count, size = first, 0, 0
    for it in items:
        cost = it["meta"].get("bytes", 0)
        if count and (count >= partition_size or (partition_bytes and size + cost > partition_bytes)):
            partition, count, size = partition + 1, 0, 0
        it["partition"] = partition
        count, size = count + 1, size + cost
    return partition + 1 if items else first


def list_inputs(sources, partition_size: int, partition_bytes: int = 0) -> tuple[list[dict], Counter]:
    """All inputs of all sources in this process, unit by unit, each with its partition number and
    its run-wide unique key (the partitions and keys ``curate.listing`` forms in Ray tasks); and the
    files passed over. Relative paths resolve against this process's working directory."""
    bases = [anchor(src, os.getcwd()) for src in sources]
    units, skipped = plan_units(sources, bases)
    items, partition = [], 0
    for i, unit in units:
        found, passed = list_unit(sources[i], unit, bases[i])
        partition = assign_partitions(found, partition, partition_size, partition_bytes)
        items += found
        skipped += passed
    for n, key in rename_repeats([it["key"] for it in items], Counter()).items():
        items[n]["meta"]["renamed_from"] = items[n]["key"]
        items[n]["key"] = key
    return items, skipped


def rename_repeats(keys: list[str], seen: Counter) -> dict[int, str]:
    """Position -> new key of each of ``keys`` (in listing order: units, then partitions, then key
    order) that an earlier input already has; ``seen`` counts the keys met before these.

    Two inputs share a key only when 48 bits of their identities' hashes collide (a shard's URI is
    in its samples' keys, so two crawls' ``000000001`` never do; at 400M inputs ~280 pairs are
    expected). The first keeps its key and the n-th becomes ``{key}-{n}``, which no listed key can
    be (stems have no ``-``): the listing order is fixed, so reruns rename the same inputs, and
    sources or shards added after the others never rename what an earlier run already curated.
    """
    renamed = {}
    for n, key in enumerate(keys):
        seen[key] += 1
        if seen[key] > 1:
            renamed[n] = f"{key}-{seen[key]}"
    return renamed
