"""Shard numbers are contiguous within a set, across partitions that keep nothing of a modality,
through a rerun after a kill and a rerun that renumbers (curate.sink.place_shards)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import webdataset as wds
from braceexpand import braceexpand
from PIL import Image

from curate.config import load_run
from curate.pipeline import run
from shards.tools import verify

BROKEN = b"this is not an image"


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(i).integers(0, 255, (72, 80, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _run(tmp: Path, out: Path, images: Path, pages: Path) -> dict:
    manifest = tmp / "m.toml"
    manifest.write_text(
        f'name = "t"\nexecutor = "local"\npartition_size = 4\n[output]\ndir = "{out}"\n'
        f'[[sources]]\nmodality = "image"\nuri = "{images}"\n[[sources]]\nmodality = "ocr"\nuri = "{pages}"\n'
        '[[stages]]\nname = "image_decode"\nsize = 64\n[[stages]]\nname = "ocr_text"\n'
    )
    cfg, stages = load_run(str(manifest))
    return run(cfg, stages, progress=False, report=False)


def _published(out: Path) -> dict:
    """Every published byte: tars and indexes of the sets, and the ledger parts."""
    files = sorted([*(out / "shards").rglob("*"), *(out / "ledger").glob("*.parquet")])
    return {str(p.relative_to(out)): p.read_bytes() for p in files if p.is_file()}


def _check_set(out: Path, modality: str, partitions: list[int]) -> dict:
    """The set's shards are numbered 0..n-1 in partition order; a brace URL names them all; the ledger
    names each kept sample's published shard, and each sample's json its partition."""
    folder = out / "shards" / modality
    index = json.loads((folder / "index.json").read_text())
    names = [f"corpus_{modality}-v1-{i:06d}.tar" for i in range(len(partitions))]
    assert [s["name"] for s in index["shards"]] == names
    assert [s["partition"] for s in index["shards"]] == partitions
    brace = f"{folder}/corpus_{modality}-v1-{{000000..{len(partitions) - 1:06d}}}.tar"
    assert list(braceexpand(brace)) == [str(folder / n) for n in names]
    samples = list(wds.WebDataset(brace, shardshuffle=False))
    assert len(samples) == index["samples"]
    ledger = pd.read_parquet(out / "ledger")
    kept = ledger[(ledger.modality == modality) & (ledger.status == "kept")].set_index("key")
    for entry in index["shards"]:
        with tarfile.open(folder / entry["name"]) as tar:
            keys = {m.name.split(".", 1)[0] for m in tar.getmembers()}
        assert set(kept.index[kept.shard == f"{modality}/{entry['name']}"]) == keys
    assert all(json.loads(s["json"])["partition"] in partitions for s in samples)
    return index


def test_numbers_are_contiguous_across_empty_partitions_and_reruns(tmp_path):
    images, pages = tmp_path / "images", tmp_path / "pages"
    images.mkdir()
    pages.mkdir()
    for i in range(12):  # partitions 0, 1, 2 of four images; every input of partition 1 fails
        (images / f"im{i:03d}.png").write_bytes(BROKEN if 4 <= i < 8 else _png(i))
    for i in range(3):  # the OCR pages: a partition with no image
        (pages / f"p{i}.png").write_bytes(_png(100 + i))
        (pages / f"p{i}.txt").write_text(f"page {i} says hello")
    out = tmp_path / "out"
    summary = _run(tmp_path, out, images, pages)
    assert (summary["kept"], summary["failed"]) == (11, 4)
    _check_set(out, "image", [0, 2])  # partition 1 left no shard, and no gap
    (ocr,) = _check_set(out, "ocr", [3])["shards"]
    assert verify(str(out / "shards"))["ok"]
    staged, published = (
        out / "_work/shards/image/part-000002.tar.staged",
        out / "shards/image/corpus_image-v1-000001.tar",
    )
    assert os.path.samefile(staged, published)  # placed by a hard link: the bytes are stored once
    first = _published(out)

    # killed before the set's final step, after partition 2 started again: the rerun publishes the same bytes
    for path in [out / "_partitions/000002.json", out / "ledger/part-000002.parquet", *out.glob("shards/*/*")]:
        path.unlink()
    _run(tmp_path, out, images, pages)
    assert _published(out) == first

    # a run folder from before staging (partition 2's tar named by its partition in the set): the rerun renumbers it
    marker = json.loads((out / "_partitions/000002.json").read_text())
    marker["shards"][0]["name"] = "corpus_image-v1-000002.tar"
    (out / "_partitions/000002.json").write_text(json.dumps(marker))
    (out / "_work/shards/image/part-000002.tar.staged").rename(out / "shards/image/corpus_image-v1-000002.tar")
    (out / "shards/image/corpus_image-v1-000001.tar").unlink()
    _run(tmp_path, out, images, pages)
    assert _published(out) == first

    # partition 1 now keeps its images: the numbers after it shift, the ledger follows
    for i in range(4, 8):
        (images / f"im{i:03d}.png").write_bytes(_png(i))
    (out / "_partitions/000001.json").unlink()
    assert _run(tmp_path, out, images, pages)["kept"] == 15
    index = _check_set(out, "image", [0, 1, 2])
    assert index["shards"][2]["sha256"] == json.loads(first["shards/image/index.json"])["shards"][1]["sha256"]
    assert _check_set(out, "ocr", [3])["shards"] == [ocr]
    assert verify(str(out / "shards"))["ok"]
