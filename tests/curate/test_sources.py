"""Listing: stable keys, deterministic partitions bounded by count and by bytes, clear errors."""

from __future__ import annotations

import pytest

from curate.config import SourceConfig
from curate.sources import SourceError, list_inputs, make_key


def _files(root, sizes):
    root.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(sizes):
        (root / f"v{i:02d}.mp4").write_bytes(b"x" * n)
    return SourceConfig(modality="video", uri=str(root))


def test_partitions_close_on_count_or_on_bytes(tmp_path):
    src = _files(tmp_path / "a", [10, 10, 10, 100, 10, 10, 10, 10, 10])
    items, skipped = list_inputs([src], partition_size=4, partition_bytes=50)
    assert skipped == 0
    assert [it["partition"] for it in items] == [0, 0, 0, 1, 2, 2, 2, 2, 3]  # the 100-byte file sits alone
    assert [it["partition"] for it in list_inputs([src], partition_size=4, partition_bytes=0)[0]] == [0] * 4 + [
        1
    ] * 4 + [2]
    again = list_inputs([src], partition_size=4, partition_bytes=50)[0]
    assert [(it["key"], it["partition"]) for it in again] == [(it["key"], it["partition"]) for it in items]


def test_keys_are_stable_safe_and_distinct():
    a, b = make_key("s3://b/x/clip 01.mp4"), make_key("/data/x/clip 01.mp4")
    assert a != b and a.startswith("clip_01-") and make_key("s3://b/x/clip 01.mp4") == a
    assert "." not in make_key("/d/a.b.c.jpg")


def test_overlapping_sources_and_unknown_files(tmp_path):
    src = _files(tmp_path / "a", [1, 1])
    (tmp_path / "a" / "notes.txt").write_text("not a video")
    items, skipped = list_inputs([src], 8)
    assert len(items) == 2 and skipped == 1
    with pytest.raises(SourceError, match="listed twice"):
        list_inputs([src, src], 8)
