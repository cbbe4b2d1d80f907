"""Reading img2dataset shards: our shard source through the pipeline's first stage vs stock webdataset.

    .venv/bin/python tests/benchmarks/bench_sources.py [--shards 4] [--samples 500] [--repeat 3] [--write]

Shards in the img2dataset layout (``{key}.jpg`` + ``.txt`` + ``.json`` per sample, a ``.parquet``
beside each tar), the pictures 256-384 px crops of the photographs that ship with scikit-image.
Both sides do the same work per sample, in one process on one core (CPU seconds, median of
--repeat rounds, after a warm-up):

* S1 read: ours = ``list_inputs`` (tar headers, caption and json) then one ranged read of each
  image member, vs ``wds.WebDataset`` yielding each sample's raw members;
* S2 first stage: ours = the listing then the ``image_decode`` stage (decode, resize to 448 px
  shorter side, JPEG re-encode) through ``run_in_process``, vs ``wds.WebDataset(...).decode("pil")``
  followed by the same resize and encode;
* S3 table listing: a parquet table of --rows rows (URI, caption, two kept columns; row groups of
  100,000 rows, each a listing unit) listed into inputs and partitions, vs pyarrow reading the same
  row groups into Python rows (``to_pylist``), the floor of any per-row listing in Python.

Ratios are ours / baseline in samples per CPU second. --write replaces RESULTS.md's "## Sources".
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image
from skimage import data as skdata

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common import cpu_seconds, machine

from curate.config import SourceConfig
from curate.sources import list_inputs
from curate.stage import new_rows, run_in_process
from curate.stages.images import ImageDecode, resize_policy
from shards import storage

RESULTS = Path(__file__).with_name("RESULTS.md")
NOTES = """Notes:
- S1: our listing parses each tar's headers with `tarfile` (which also resyncs past a corrupt header)
  and keeps the caption and json, then each image member is one ranged read; stock webdataset
  streams each tar once. S2 adds the same decode, resize and encode on both sides; the baseline also
  runs webdataset's decoder chain (`.decode("pil")` decodes `txt` and `json` too).
- S3: per row, a key (SHA-1 of table and row, a readable stem of the URI), the URI resolved against
  the table, the caption and kept columns: Python work that pyarrow's row conversion does not do.
  A run lists each row group in a Ray task of its own, so this is the rate per core.
"""
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")


def build(root: Path, shards: int, samples: int) -> list[str]:
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    photos = [getattr(skdata, name)()[..., :3] for name in PHOTOS]
    tars = []
    for s in range(shards):
        path = root / f"{s:05d}.tar"
        rows = []
        with tarfile.open(path, "w") as tar:
            for n in range(samples):
                key = f"{s:05d}{n:04d}"
                img = photos[rng.integers(len(photos))]
                side = int(rng.integers(256, min(384, *img.shape[:2]) + 1))
                y, x = rng.integers(0, img.shape[0] - side + 1), rng.integers(0, img.shape[1] - side + 1)
                buf = io.BytesIO()
                Image.fromarray(img[y : y + side, x : x + side]).save(buf, format="JPEG", quality=90)
                caption = f"sample {key}: a photograph of something, {rng.integers(1e9)}"
                meta = {"key": key, "status": "success", "url": f"http://example.com/{key}.jpg", "width": side}
                for ext, payload in (
                    ("jpg", buf.getvalue()),
                    ("txt", caption.encode()),
                    ("json", json.dumps(meta).encode()),
                ):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                rows.append({"key": key, "status": "success", "caption": caption})
        pq.write_table(pa.Table.from_pylist(rows), path.with_suffix(".parquet"))
        tars.append(str(path))
    return tars


def ours_read(root: str) -> int:
    items, _ = list_inputs([SourceConfig(modality="image", uri=root, format="webdataset")], 64)
    return sum(bool(storage.read_bytes(it["uri"])) and bool(it["meta"]["caption"]) for it in items)


def theirs_read(tars: list[str]) -> int:
    n = 0
    for sample in wds.WebDataset(tars, shardshuffle=False):
        n += bool(sample["jpg"]) and bool(sample["txt"]) and bool(json.loads(sample["json"]))
    return n


def ours_stage(root: str) -> int:
    items, _ = list_inputs([SourceConfig(modality="image", uri=root, format="webdataset")], 64)
    stage = ImageDecode()
    kept = 0
    for p in sorted({it["partition"] for it in items}):  # partition by partition, as the local executor
        out = run_in_process([stage], new_rows([it for it in items if it["partition"] == p]), setup=False)
        kept += int(sum(s == "live" for s in out["status"]))
    return kept


def theirs_stage(tars: list[str]) -> int:
    n = 0
    stage = ImageDecode()
    for sample in wds.WebDataset(tars, shardshuffle=False).decode("pil"):
        img = sample["jpg"].convert("RGB")
        out = resize_policy(img, stage.size, stage.mode)
        buf = io.BytesIO()
        out.save(buf, format="JPEG", quality=stage.quality, subsampling=2)
        n += bool(buf.tell()) and bool(sample["txt"])
    return n


def build_table(root: Path, rows: int) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = np.arange(rows)
    table = pa.table(
        {
            "url": [f"media/{i % 1000:03d}/{i:08d}.jpg" for i in n],
            "caption": [f"a photograph number {i}, with a caption of ordinary length" for i in n],
            "license": np.where(n % 3 == 0, "cc-by", "cc0").tolist(),
            "score": (n % 97 / 97).tolist(),
        }
    )
    path = root / "table.parquet"
    pq.write_table(table, path, row_group_size=100_000)
    return str(path)


def ours_table(table: str) -> int:
    src = SourceConfig(
        modality="image",
        uri=table,
        format="parquet",
        uri_column="url",
        caption_column="caption",
        keep_columns=("license", "score"),
    )
    return len(list_inputs([src], 64)[0])


def theirs_table(table: str) -> int:
    import pyarrow.parquet as pq

    f = pq.ParquetFile(table)
    return sum(len(f.read_row_group(g).to_pylist()) for g in range(f.num_row_groups))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tars = build(Path(tmp), args.shards, args.samples)
        total = args.shards * args.samples
        assert ours_read(tmp) == theirs_read(tars) == ours_stage(tmp) == theirs_stage(tars) == total
        rows = []
        for name, ours, theirs in (
            ("S1 read (bytes, caption, json)", lambda: ours_read(tmp), lambda: theirs_read(tars)),
            ("S2 first stage (decode, resize, encode)", lambda: ours_stage(tmp), lambda: theirs_stage(tars)),
        ):
            a = total / cpu_seconds(ours, args.repeat)
            b = total / cpu_seconds(theirs, args.repeat)
            rows.append(f"| {name} | {a:,.0f} | {b:,.0f} | **{a / b:.2f}** |")
        table = build_table(Path(tmp), args.rows)
        assert ours_table(table) == theirs_table(table) == args.rows
        a = args.rows / cpu_seconds(lambda: ours_table(table), args.repeat)
        b = args.rows / cpu_seconds(lambda: theirs_table(table), args.repeat)
        rows.append(
            f"| S3 listing a {args.rows:,}-row parquet table (rows/s/core) | {a:,.0f} | {b:,.0f} | **{a / b:.2f}** |"
        )
    where = machine(f"{args.shards} shards x {args.samples} samples, local disk (page cache)")
    table = "\n".join(
        [
            "| measure | ours samples/s/core | baseline samples/s/core | ratio |",
            "|---|---|---|---|",
            *rows,
        ]
    )
    print(where)
    print(table)
    if args.write:
        section = (
            "## Sources\n\n`python tests/benchmarks/bench_sources.py` (issue 26) on " + where + ". CPU seconds of one "
            "process, median of " + str(args.repeat) + " rounds; S1, S2: ours / stock `webdataset` 1.0.2 on the "
            "same img2dataset shards, the same work per sample; S3: ours / pyarrow rows into Python (see the "
            "script's docstring).\n\n" + table + "\n\n" + NOTES
        )
        text = RESULTS.read_text()
        start = text.find("## Sources\n")
        if start < 0:
            text = text.rstrip("\n") + "\n\n\n" + section
        else:
            end = text.find("\n## ", start + 1)
            text = text[:start] + section + ("\n" + text[end + 1 :] if end >= 0 else "")
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
