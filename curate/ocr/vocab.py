"""The corpus word vocabulary (a Ray aggregation, or one in this process) and the word-id labels of one image.

A word's count is the number of images it appears in (document frequency), so one page that
repeats a word fifty times does not put it in the vocabulary. Words are ranked by count, ties
by the word itself, so the same corpus always gives the same ids. Ids start at 0 and every id
is a real word: an image without known words gets an empty label, never a padding id (the
reference padded with 0, which trained class 0 on text-free images).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections import Counter

import numpy as np
import pandas as pd

from curate.cluster import shuffle_partitions
from curate.ocr.engines import Line
from curate.ocr.text import tokenize
from shards import storage


def lines_of(meta: dict) -> list[Line]:
    return [Line.from_compact(item) for item in (meta.get("ocr") or {}).get("lines", [])]


def _document_counts(batch: dict, cjk: str):
    import pyarrow as pa

    counts: Counter = Counter()
    for meta in batch["meta"]:
        meta = json.loads(meta) if isinstance(meta, str) else meta
        counts.update({t for line in lines_of(meta) for t in tokenize(line.text, cjk)})
    return pa.table({"word": pa.array(list(counts), pa.string()), "n": pa.array(list(counts.values()), pa.int64())})


def _at_least(batch: dict, min_count: int) -> dict:
    keep = batch["count"] >= min_count
    return {"word": batch["word"][keep], "count": batch["count"][keep]}


def count_words(ds, cjk: str = "char", min_count: int = 1) -> pd.DataFrame:
    """Columns word, count (images holding the word): summed by Ray across blocks and nodes, and
    only words seen in ``min_count`` images reach the driver (OCR noise makes the long tail huge)."""
    counts = ds.map_batches(functools.partial(_document_counts, cjk=cjk), batch_format="numpy", batch_size=256)
    counts = counts.materialize()
    empty = pd.DataFrame({"word": pd.Series([], dtype=object), "count": pd.Series([], dtype="int64")})
    if counts.count() == 0:
        return empty
    summed = counts.groupby("word", num_partitions=shuffle_partitions()).sum("n").rename_columns({"sum(n)": "count"})
    frame = summed.map_batches(functools.partial(_at_least, min_count=min_count), batch_format="numpy").to_pandas()
    return frame if len(frame) else empty  # an empty Ray result has no columns


def rank(counts: pd.DataFrame, size: int, min_count: int) -> pd.DataFrame:
    """Columns id, word, count: the ``size`` most frequent words seen in at least ``min_count`` images."""
    frame = counts[counts["count"] >= min_count].sort_values(["count", "word"], ascending=[False, True]).head(size)
    frame = frame.reset_index(drop=True)
    frame.insert(0, "id", np.arange(len(frame), dtype=np.int64))
    return frame[["id", "word", "count"]]


def count_words_local(table, cjk: str = "char") -> pd.DataFrame:
    """:func:`count_words` in this process over one Arrow table with a ``meta`` column (the local executor)."""
    counts = [
        _document_counts({"meta": b.column("meta").to_pylist()}, cjk) for b in table.to_batches(max_chunksize=256)
    ]
    frame = pd.concat([c.to_pandas() for c in counts]) if counts else pd.DataFrame({"word": [], "n": []})
    return frame.groupby("word", as_index=False)["n"].sum().rename(columns={"n": "count"}).astype({"count": "int64"})


def write_vocab(frame: pd.DataFrame, uri: str) -> str:
    """A TSV (id, word, count; tokens never hold tabs or newlines); returns its SHA-256."""
    body = "id\tword\tcount\n" + "".join(f"{i}\t{w}\t{c}\n" for i, w, c in frame.itertuples(index=False))
    data = body.encode("utf-8")
    storage.write_bytes(uri, data)
    return hashlib.sha256(data).hexdigest()


def read_vocab(uri: str) -> tuple[dict[str, int], str]:
    data = storage.read_bytes(uri)
    words = {}
    for row in data.decode("utf-8").splitlines()[1:]:
        i, word, _ = row.split("\t")
        words[word] = int(i)
    return words, hashlib.sha256(data).hexdigest()


@dataclasses.dataclass(frozen=True)
class Labels:
    ids: np.ndarray  # int32, at most max_words, no repeats
    words: int  # tokens read
    oov: int  # tokens not in the vocabulary


def label(lines: list[Line], vocab: dict[str, int], max_words: int = 100, cjk: str = "char") -> Labels:
    """Word ids ordered by line confidence (highest first), then reading order; first occurrence wins."""
    entries = sorted(
        (-line.conf, li, pos, tok) for li, line in enumerate(lines) for pos, tok in enumerate(tokenize(line.text, cjk))
    )
    ids, seen, oov = [], set(), 0
    for *_, tok in entries:
        wid = vocab.get(tok)
        if wid is None:
            oov += 1
        elif wid not in seen and len(ids) < max_words:
            seen.add(wid)
            ids.append(wid)
    return Labels(np.asarray(ids, dtype=np.int32), len(entries), oov)
