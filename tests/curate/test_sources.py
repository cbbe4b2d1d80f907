"""Listing: stable keys, deterministic partitions bounded by count and by bytes, clear errors."""

from __future__ import annotations

import io
import json
import os
import re
from collections import Counter

import pytest
from PIL import Image

from curate.config import SourceConfig, load_run
from curate.ledger import format_summary, read_ledger
from curate.pipeline import run
from curate.sources import SourceError, list_inputs, make_key, rename_repeats


def _files(root, sizes):
    root.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(sizes):
        (root / f"v{i:02d}.mp4").write_bytes(b"x" * n)
    return SourceConfig(modality="video", uri=str(root))


def test_partitions_close_on_count_or_on_bytes(tmp_path):
    src = _files(tmp_path / "a", [10, 10, 10, 100, 10, 10, 10, 10, 10])
    items, skipped = list_inputs([src], partition_size=4, partition_bytes=50)
    assert not skipped
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
    assert len(items) == 2 and skipped == {".txt": 1}
    with pytest.raises(SourceError, match="listed twice"):
        list_inputs([src, src], 8)


def _jpeg(colour, size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _image_run(tmp_path, folder, modality="image", stages=("image_decode",)):
    manifest = tmp_path / "m.toml"
    manifest.write_text(
        f'name = "t"\nexecutor = "local"\n[output]\ndir = "{tmp_path / "out"}"\n'
        f'[[sources]]\nmodality = "{modality}"\nuri = "{folder}"\n'
        + "".join(f'[[stages]]\nname = "{s}"\n' for s in stages)
    )
    cfg, built = load_run(str(manifest))
    summary = run(cfg, built, progress=False, report=False)
    return summary, read_ledger(str(tmp_path / "out"))


def test_decodable_images_are_inputs_and_other_files_are_counted_by_extension(tmp_path):
    """.jfif, .avif and a JPEG without an extension are curated; what is passed over is named."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.jfif").write_bytes(_jpeg((200, 10, 10)))
    (folder / "b.jpg").write_bytes(_jpeg((10, 200, 10)))
    Image.new("RGB", (64, 48), (10, 10, 200)).save(folder / "c.avif")
    (folder / "photo_without_extension").write_bytes(_jpeg((250, 250, 10)))
    (folder / "jpeg_named.png").write_bytes(_jpeg((10, 250, 250)))
    (folder / "notes.json").write_text("{}")
    (folder / "readme.md").write_text("hello")
    (folder / "more.json").write_text("[]")
    summary, ledger = _image_run(tmp_path, folder)
    assert summary["kept"] == summary["inputs"] == 5
    meta = ledger["meta"].map(json.loads)
    formats = {os.path.basename(u): m["source_format"] for u, m in zip(ledger["uri"], meta, strict=True)}
    assert formats["jpeg_named.png"] == formats["photo_without_extension"] == formats["a.jfif"] == "jpeg"
    assert formats["c.avif"] == "avif"
    assert summary["files_passed_over"] == 3
    assert summary["files_passed_over_by_extension"] == {".json": 2, ".md": 1}
    assert set(ledger["uri"].map(lambda u: os.path.basename(u))) == {
        "a.jfif",
        "b.jpg",
        "c.avif",
        "photo_without_extension",
        "jpeg_named.png",
    }
    assert re.search(r"skipped \(not inputs\) +3 +\.json 2, \.md 1\n", format_summary(summary))


def test_ocr_transcripts_are_not_counted_as_passed_over(tmp_path):
    folder = tmp_path / "pages"
    folder.mkdir()
    (folder / "p0.png").write_bytes(_jpeg((255, 255, 255)))
    (folder / "p0.txt").write_text("words")
    (folder / "stray.txt").write_text("no page")
    items, skipped = list_inputs([SourceConfig(modality="ocr", uri=str(folder))], 8)
    assert len(items) == 1 and skipped == {".txt": 1}


def test_a_file_name_that_is_not_utf8_fails_that_input_not_the_run(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    good = _jpeg((128, 64, 32))
    (folder / "good.jpg").write_bytes(good)
    try:
        (folder / os.fsdecode(b"caf\xe9.jpg")).write_bytes(good)
    except (UnicodeEncodeError, OSError):
        pytest.skip("this file system refuses names that are not UTF-8")
    summary, ledger = _image_run(tmp_path, folder)
    assert (summary["inputs"], summary["kept"], summary["failed"]) == (2, 1, 1)
    bad = ledger[ledger.status == "failed"].iloc[0]
    assert bad["reason"] == "source/name_not_utf8"
    assert bad["uri"].endswith("caf\\xe9.jpg") and "not valid UTF-8" in bad["detail"]
    assert ledger[ledger.status == "kept"].iloc[0]["uri"].endswith("good.jpg")


def test_repeated_keys_are_renamed_in_listing_order():
    """The first input with a key keeps it; the n-th becomes key-n; ``seen`` carries the count from
    earlier partitions, so renaming partition by partition gives what renaming all at once does."""
    keys = ["a-1", "b-2", "a-1", "c-3", "a-1", "b-2"]
    assert rename_repeats(keys, Counter()) == {2: "a-1-2", 4: "a-1-3", 5: "b-2-2"}
    seen = Counter()
    assert rename_repeats(keys[:3], seen) == {2: "a-1-2"}
    assert rename_repeats(keys[3:], seen) == {1: "a-1-3", 2: "b-2-2"}


def test_raw_video_streams_are_passed_over_by_name_not_failed(tmp_path):
    """A raw H.264 stream has no timestamps to sample clips by: not a default input, but counted."""
    from curate.demo.synthetic_video import make_clip

    folder = tmp_path / "videos"
    folder.mkdir()
    make_clip(folder / "a.mp4", size=64, frames=8)
    make_clip(folder / "b.h264", size=64, frames=8)
    items, skipped = list_inputs([SourceConfig(modality="video", uri=str(folder))], 8)
    assert [os.path.basename(it["uri"]) for it in items] == ["a.mp4"] and skipped == {".h264": 1}
