"""List a table source (parquet, CSV, JSONL) as inputs: one per row.

The way video corpora ship (WebVid, Panda-70M, HD-VILA, InternVid: video URI, clip start and end,
caption) and a common way image-text corpora do. Each row names its media in ``uri_column``
(relative URIs resolve against the table's folder), optionally a caption and, for video, the clip
``[start, end)`` in seconds that the row stands for; ``keep_columns`` travel into the sample's json.
A row that cannot become an input (no usable URI, unreadable times, a JSONL line that does not
parse) is a failed input naming the table and its row, never a stopped run.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import math
import posixpath
from collections import Counter

import pyarrow.parquet as pq

from shards import storage

SUFFIXES = {"parquet": (".parquet",), "csv": (".csv",), "jsonl": (".jsonl", ".json")}
READABLE = ("s3://",)  # URI schemes storage reads; anything else with "://" is not fetched here


def table_units(src) -> tuple[list[dict], Counter]:
    """The listing units of a table source (one per parquet row group, else one per table), and
    the other files, passed over, counted by extension. Only parquet footers are read here."""
    files = storage.list_pattern(src.uri)
    tables = [u for u, _ in files if u.lower().endswith(SUFFIXES[src.format])]
    if not tables:
        raise FileNotFoundError(f"no {'/'.join(SUFFIXES[src.format])} tables among {len(files)} files")
    units = []
    for table in tables:
        if src.format != "parquet":
            units.append({"kind": "table", "uri": table})
            continue
        with _parquet(table) as f:
            sizes = [f.metadata.row_group(g).num_rows for g in range(f.metadata.num_row_groups)]
        starts = [0, *itertools.accumulate(sizes)][:-1]
        units += [{"kind": "table", "uri": table, "row_group": g, "first_row": n} for g, n in enumerate(starts)]
    taken = set(tables)
    return units, storage.by_extension(u for u, _ in files if u not in taken)


def table_items(src, unit: dict, make_key) -> list[dict]:
    """The inputs of one unit: a table, or one row group of a parquet table."""
    return [_item(src, unit["uri"], where, row, make_key) for where, row in _rows(src.format, unit)]


@contextlib.contextmanager
def _parquet(table: str):
    """A parquet table opened for its footer and row groups; S3 through ranged reads, never whole."""
    source = storage.open_media(table)
    try:
        yield pq.ParquetFile(source)
    finally:
        if not isinstance(source, str):
            source.close()


def _rows(fmt: str, unit: dict):
    """``(provenance, row dict)`` per row: its 1-based number and where its bytes start."""
    table = unit["uri"]
    if fmt == "parquet":
        g = unit["row_group"]
        with _parquet(table) as f:
            offset, rows = f.metadata.row_group(g).column(0).file_offset, f.read_row_group(g).to_pylist()
        for i, row in enumerate(rows):
            yield {"row": unit["first_row"] + i + 1, "row_group": g, "row_in_group": i, "offset": offset}, row
        return
    data = storage.read_bytes(table)
    offset, lines = 0, []
    for line in io.BytesIO(data):
        lines.append((offset, line))
        offset += len(line)
    if fmt == "jsonl":
        for n, (offset, line) in enumerate(lines, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise ValueError(f"a JSON {type(row).__name__}, not an object")
                except ValueError as exc:
                    row = ValueError(f"not a JSON object: {exc}")
                yield {"row": n, "offset": offset}, row
        return
    starts = []  # csv: a row may span lines (quoted newlines); it starts where its first line does

    def text():
        for offset, line in lines:
            starts.append(offset)
            yield line.decode("utf-8", "replace")

    reader = csv.reader(text())
    header = next(reader, [])
    n = 0
    while True:
        first = reader.line_num  # lines read before this row
        values = next(reader, None)
        if values is None:
            return
        if not values:
            continue  # a blank line
        n += 1
        row = dict(zip(header, values, strict=False))
        if len(values) != len(header):
            row = ValueError(f"{len(values)} fields under a header of {len(header)}")
        yield {"row": n, "line": first + 1, "offset": starts[first]}, row


def _item(src, table: str, where: dict, row, make_key) -> dict:
    identity = f"{table}#{where['row']}"
    provenance = {"source": src.uri, "table": table, **where}
    item = {"key": None, "uri": table, "modality": src.modality, "meta": {"provenance": provenance}}
    try:
        if isinstance(row, Exception):
            raise _Bad("bad_row", str(row))
        _check_columns(src, table, row)
        uri = _resolve(table, row.get(src.uri_column), src.uri_column)
        item.update(key=make_key(uri, identity), uri=uri)
        meta = item["meta"]
        meta["bytes"] = 0  # unknown until read: partitions of tables close on count
        if src.caption_column:
            caption = row.get(src.caption_column)
            meta["caption"] = None if caption is None or caption != caption else str(caption)
        if src.start_column or src.end_column:
            meta["span"] = _span(row, src.start_column, src.end_column)
        if src.keep_columns:
            meta["source_meta"] = {c: _plain(row.get(c)) for c in src.keep_columns}
    except _Bad as bad:
        item["error"] = [f"source/{bad.code}", f"{table} row {where['row']}: {bad.detail}"]
        item["key"] = item["key"] or make_key(identity)  # no usable URI: named after the table and row
    return item


class _Bad(Exception):
    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code, self.detail = code, detail


class TableError(ValueError):
    """A table whose columns do not match the source's settings (every row would fail alike)."""


def _check_columns(src, table: str, row: dict) -> None:
    wanted = [src.uri_column, src.caption_column, src.start_column, src.end_column, *src.keep_columns]
    missing = [c for c in wanted if c and c not in row]
    if missing:
        raise TableError(f"{table}: no column(s) {missing}; its columns are {sorted(row)}")


def _resolve(table: str, value, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise _Bad("no_uri", f"{column} is empty")
    if not isinstance(value, str) or not value.strip():
        raise _Bad("no_uri", f"{column} is {value!r}, not a URI")
    value = value.strip()
    if "://" in value and not value.startswith(READABLE):
        raise _Bad("no_uri", f"{value!r}: only local paths and s3:// URIs are read (fetch web URLs first)")
    if value.startswith("s3://") or value.startswith("/"):
        return value
    if storage.is_s3(table):
        bucket, key = storage.split_s3(table)
        return f"s3://{bucket}" + posixpath.normpath(posixpath.join("/", posixpath.dirname(key), value))
    return posixpath.normpath(posixpath.join(posixpath.dirname(table), value))


def _span(row: dict, start_column: str, end_column: str) -> list:
    def seconds(column: str, default):
        if not column:
            return default
        value = row.get(column)
        try:
            t = float(value)
        except (TypeError, ValueError):
            raise _Bad("bad_time", f"{column} is {value!r}, not seconds") from None
        if not math.isfinite(t) or t < 0:
            raise _Bad("bad_time", f"{column} is {value!r}, not a time in the video")
        return t

    start, end = seconds(start_column, 0.0), seconds(end_column, None)
    if end is not None and end <= start:
        raise _Bad("bad_time", f"clip end {end:g} s is not after its start {start:g} s")
    return [start, end]


def _plain(value):
    """A cell as JSON: numbers, strings, booleans, lists and nulls as they are, anything else as text."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)
