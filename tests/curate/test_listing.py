"""Listing that scales: units (tars, parquet row groups, folder chunks) list in Ray tasks, each forms
its own partitions, and the driver keeps a count and a key hash per partition; the same partitions
as listing in this process, on every rerun."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from source_kit import photo, write_shard

from curate.config import OutputConfig, RunConfig, SourceConfig, load_run
from curate.listing import KEYS_ON_DRIVER, _holding_repeats, list_run, partition_items
from curate.pipeline import run
from curate.sink import keys_digest
from curate.sources import SourceError, list_inputs
from shards import storage

# Two crawls' shards whose sample 000000001 gets one key, 000000001-1babe30f9d17: the SHA-1 digests of
# "s3://crawl/c10659100/00000.tar/000000001" and of ".../c27500933/..." share their first 48 bits
# (found by hashing 2**25 such names; keys carry 48 bits, so 400M inputs hold ~280 such pairs)
COLLIDING = ("c10659100", "c27500933")
SHARED_KEY = "000000001-1babe30f9d17"

ROOT = Path(__file__).resolve().parents[2]


def _sources(root):
    (root / "media").mkdir(parents=True)
    for n in range(5):
        (root / "media" / f"{n}.jpg").write_bytes(photo(n, size=40))
    rows = [{"path": f"media/{n % 5}.jpg", "caption": f"row {n}"} for n in range(150)]
    pq.write_table(pa.Table.from_pylist(rows), root / "table.parquet", row_group_size=50)  # three row groups
    write_shard(root / "shards" / "00000.tar", 0, [{"image": photo(n), "caption": "c", "json": {}} for n in range(7)])
    return (
        SourceConfig(modality="image", uri=str(root / "table.parquet"), format="parquet", uri_column="path"),
        SourceConfig(modality="image", uri=str(root / "media")),
        SourceConfig(modality="image", uri=str(root / "shards"), format="webdataset"),
    )


def test_units_list_in_ray_tasks_into_the_partitions_listed_in_process(tmp_path, ray_cluster):
    sources = _sources(tmp_path / "corpus")
    out = tmp_path / "out"
    cfg = RunConfig(name="x", sources=sources, stages=(), output=OutputConfig(dir=str(out)), partition_size=20)
    partitions, skipped = list_run(cfg, str(out), in_ray=True)
    items, skipped_here = list_inputs(sources, 20)
    groups = defaultdict(list)
    for it in items:
        groups[it["partition"]].append(it["key"])
    assert skipped == skipped_here and not skipped
    assert {p: (d["count"], d["keys_sha256"]) for p, d in partitions.items()} == {
        p: (len(keys), keys_digest(keys)) for p, keys in groups.items()
    }
    # a partition never spans a unit: 3 row groups of 50 rows -> 20 + 20 + 10 each; the folder; the tar
    assert [d["count"] for _, d in sorted(partitions.items())] == [20, 20, 10] * 3 + [5, 7]
    assert all(set(d) == {"listing", "local", "count", "keys_sha256"} for d in partitions.values())  # no inputs
    assert list_run(cfg, str(out), in_ray=True) == (partitions, skipped)  # a rerun forms the same partitions
    for group in range(3):  # each row group's rows, read back from its unit's listing by partition
        rows = [
            it["meta"]["provenance"]["row"]
            for p in range(3 * group, 3 * group + 3)
            for it in partition_items(partitions[p], p)
        ]
        assert sorted(rows) == list(range(50 * group + 1, 50 * group + 51))
    assert [it["partition"] for it in partition_items(partitions[10], 10)] == [10] * 7


def test_a_rerun_redoes_only_the_partition_whose_marker_is_gone(tmp_path):
    table = _sources(tmp_path / "corpus")[0]  # 150 rows in three row groups: nine partitions of up to 20
    out = tmp_path / "out"
    manifest = tmp_path / "run.toml"
    manifest.write_text(
        f'name = "t"\nexecutor = "local"\npartition_size = 20\n[output]\ndir = "{out}"\n[[sources]]\n'
        f'modality = "image"\nformat = "parquet"\nuri = "{table.uri}"\nuri_column = "path"\n'
        '[[stages]]\nname = "image_decode"\nsize = 32\n'
    )
    first = run(*load_run(str(manifest)), progress=False, report=False)
    markers = sorted((out / "_partitions").iterdir())
    assert first["inputs"] == first["kept"] == 150 and len(markers) == 9
    markers[4].unlink()
    before = {p: p.stat().st_mtime_ns for p in markers if p.exists()}
    again = run(*load_run(str(manifest)), progress=False, report=False)
    assert [p.name for p in markers if p.stat().st_mtime_ns != before.get(p)] == ["000004.json"]
    assert (again["inputs"], again["kept"], again["shard_samples"]) == (150, 150, 150)


def test_a_source_inside_another_is_refused(tmp_path):
    sources = _sources(tmp_path / "corpus")
    outer = SourceConfig(modality="image", uri=str(tmp_path / "corpus"))
    with pytest.raises(SourceError, match="listed twice .*inside"):
        list_inputs([outer, sources[2]], 8)  # the shard set lies inside the folder


def test_inputs_of_two_tars_sharing_a_key_each_get_their_own(tmp_path, s3_server, ray_cluster):
    """The first in listing order keeps the key, the second becomes key-2 (its old key in its meta),
    alike from the run's listing and from listing in one go; the keys shared are found by a Ray
    shuffle as on the driver; a run keeps both inputs and a rerun finds it done."""
    s3 = storage.s3_client()
    s3.create_bucket(Bucket="crawl")
    captions = {}
    for i, crawl in enumerate(("c0", *COLLIDING)):  # c0's keys are its own
        local = tmp_path / crawl / "00000.tar"
        samples = [{"image": photo(10 * i + n), "caption": f"{crawl} {n}", "json": {"crawl": crawl}} for n in range(2)]
        write_shard(local, 0, samples)
        captions[crawl] = [s["caption"] for s in samples]
        for path in (local, local.with_suffix(".parquet")):
            s3.put_object(Bucket="crawl", Key=f"{crawl}/{path.name}", Body=path.read_bytes())
    src = SourceConfig(modality="image", uri="s3://crawl/", format="webdataset")
    items, _ = list_inputs([src], 8)
    shared = [
        (it["key"], it["meta"].get("renamed_from"), it["meta"]["caption"]) for it in items if "1babe" in it["key"]
    ]
    assert shared == [(SHARED_KEY, None, f"{COLLIDING[0]} 1"), (f"{SHARED_KEY}-2", SHARED_KEY, f"{COLLIDING[1]} 1")]
    assert len({it["key"] for it in items}) == 6
    s3.create_bucket(Bucket="runs")  # listing files on S3: the Ray tasks that count keys read them there
    cfg = RunConfig(name="x", sources=(src,), stages=(), output=OutputConfig(dir="s3://runs/x"), partition_size=8)
    partitions, _ = list_run(cfg, "s3://runs/x", in_ray=False)  # listing in Ray tasks: the test above
    listings = sorted({d["listing"] for d in partitions.values()})  # one per tar, c0's first
    assert _holding_repeats(listings, 6, in_ray=False) == set(listings[1:])  # counted on the driver
    assert _holding_repeats(listings, KEYS_ON_DRIVER + 1, in_ray=True) == set(listings[1:])  # by a Ray shuffle
    listed = [it for p in sorted(partitions) for it in partition_items(partitions[p], p)]
    assert [(it["key"], it["meta"]) for it in listed] == [(it["key"], it["meta"]) for it in items]
    assert [d["keys_sha256"] for _, d in sorted(partitions.items())] == [
        keys_digest(it["key"] for it in items if it["partition"] == p) for p in sorted(partitions)
    ]
    out = tmp_path / "out"
    manifest = tmp_path / "run.toml"
    manifest.write_text(
        f'name = "t"\nexecutor = "local"\n[output]\ndir = "{out}"\n[[sources]]\nmodality = "image"\n'
        f'format = "webdataset"\nuri = "{src.uri}"\n[[stages]]\nname = "image_decode"\nsize = 32\n'
    )
    summary = run(*load_run(str(manifest)), progress=False, report=False)
    assert (summary["inputs"], summary["kept"], summary["shard_samples"]) == (6, 6, 6)
    tars = sorted(str(p) for p in (out / "shards" / "image").glob("*.tar"))
    got = {s["__key__"]: s["txt"].decode() for s in wds.WebDataset(tars, shardshuffle=False)}
    assert got[SHARED_KEY] == f"{COLLIDING[0]} 1" and got[f"{SHARED_KEY}-2"] == f"{COLLIDING[1]} 1"
    assert sorted(got.values()) == sorted(c for cs in captions.values() for c in cs)
    markers = {p: p.stat().st_mtime_ns for p in (out / "_partitions").iterdir()}
    again = run(*load_run(str(manifest)), progress=False, report=False)
    assert again["kept"] == 6 and {p: p.stat().st_mtime_ns for p in (out / "_partitions").iterdir()} == markers


def test_one_unit_on_a_cluster_started_here_lists_without_a_ray_job(tmp_path):
    """A single folder has nothing to list in parallel: the driver lists it and no Ray cluster starts
    before the first input (it took 5-15 s here); joining a cluster by address still lists in its tasks."""
    root = tmp_path / "corpus"
    _sources(root)
    code = f"""
import sys
import ray
from curate.config import OutputConfig, RunConfig, SourceConfig
from curate.listing import list_run
src = SourceConfig(modality="image", uri={str(root / "media")!r})
cfg = RunConfig(name="x", sources=(src,), stages=(), output=OutputConfig(dir={str(tmp_path / "out")!r}))
partitions, _ = list_run(cfg, cfg.output.dir, in_ray=True)
print(sum(d["count"] for d in partitions.values()), ray.is_initialized())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["5", "False"]
