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
from source_kit import photo, write_shard

from curate.config import OutputConfig, RunConfig, SourceConfig, load_run
from curate.listing import list_run, partition_items
from curate.pipeline import run
from curate.sink import keys_digest
from curate.sources import SourceError, list_inputs

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
