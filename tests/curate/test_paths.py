"""Relative paths in a manifest resolve on the driver (issue 28, item 1): Ray workers, whose working
directory is not the driver's, read and write the same files; keys and shard bytes stay what the
manifest's own paths make them, wherever the run starts and wherever the corpus lies."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from source_kit import photo, write_shard

from curate.config import load_run
from curate.ledger import read_ledger
from curate.pipeline import run
from curate.sources import SourceError, make_key

MANIFEST = """name = "paths"
partition_size = 4
[output]
dir = "out"
[[sources]]
modality = "image"
uri = "corpus/images"
[[sources]]
modality = "image"
uri = "corpus/shards"
format = "webdataset"
[[stages]]
name = "image_decode"
size = 32
"""


def _project(root):
    (root / "corpus" / "images").mkdir(parents=True)
    for n in range(5):
        (root / "corpus" / "images" / f"{n}.jpg").write_bytes(photo(n, size=48))
    write_shard(root / "corpus" / "shards" / "00000.tar", 0, [{"image": photo(10 + n), "json": {}} for n in range(3)])
    (root / "m.toml").write_text(MANIFEST)


def _curated(out):
    """Key -> the kept sample's json, and each shard's SHA-256 by its name."""
    shards = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*.tar"))}
    samples = {}
    for tar in sorted(out.rglob("*.tar")):
        with tarfile.open(tar) as f:
            for m in f.getmembers():
                if m.name.endswith(".json"):
                    samples[m.name.removesuffix(".json")] = json.load(io.BytesIO(f.extractfile(m).read()))
    return samples, shards


def test_a_run_from_another_directory_on_ray_gives_the_keys_and_bytes_of_a_run_from_the_project(
    tmp_path, monkeypatch, ray_cluster
):
    project, other = tmp_path / "project", tmp_path / "elsewhere"
    _project(project)
    shutil.copytree(project / "corpus", other / "corpus")  # the same corpus, at the same relative path

    monkeypatch.chdir(project)  # the reference: the driver alone reads the relative paths
    cfg, stages = load_run("m.toml", {"executor": "local"})
    reference = run(cfg, stages, progress=False, report=False)
    # Ray's workers started in the test's working directory, where neither corpus nor output lies
    monkeypatch.chdir(other)
    cfg, stages = load_run("../project/m.toml")
    assert cfg.output.dir == str(other / "out")
    moved = run(cfg, stages, progress=False, report=False)

    assert reference["kept"] == moved["kept"] == 8 and moved["failed"] == 0
    keys = sorted(read_ledger(str(other / "out"))["key"])
    assert keys == sorted(read_ledger(str(project / "out"))["key"])
    # keys hash the paths as the manifest writes them: what they were before reads became absolute
    written = [f"corpus/images/{n}.jpg" for n in range(5)] + [f"corpus/shards/00000.tar/{n:09d}" for n in range(3)]
    assert keys == sorted(make_key(uri) for uri in written)
    samples, shards = _curated(other / "out")
    assert (samples, shards) == _curated(project / "out")  # same samples, same shard bytes
    sources = sorted(s["source"] for s in samples.values())
    assert sources[:5] == written[:5] and all(s.startswith("corpus/shards/00000.tar#bytes=") for s in sources[5:])
    assert {s["provenance"]["source"] for s in samples.values()} == {"corpus/images", "corpus/shards"}
    ledger = read_ledger(str(other / "out"))
    assert all(u.startswith(str(other / "corpus")) for u in ledger["uri"])  # what the workers read


def test_a_missing_relative_source_fails_on_the_driver_naming_where_it_looked(tmp_path, monkeypatch):
    _project(tmp_path)
    monkeypatch.chdir(tmp_path / "corpus")  # corpus/images is not under this folder
    cfg, stages = load_run("../m.toml", {"executor": "local"})
    with pytest.raises(SourceError, match=f"source image {tmp_path}/corpus/corpus/images: no such file or folder"):
        run(cfg, stages, progress=False, report=False)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs a mount namespace (root)")
def test_a_source_only_the_driver_sees_fails_before_any_stage_runs(tmp_path, ray_cluster):
    """The driver runs in a mount namespace of its own, whose corpus folder (a tmpfs) the cluster's
    workers, outside it, do not see: as on a cluster whose nodes lack the driver's disk."""
    _project(tmp_path / "staged")
    (tmp_path / "m.toml").write_text(MANIFEST)
    (tmp_path / "corpus").mkdir()
    root = str(Path(__file__).parents[2])  # this checkout's code, on the driver and on the workers
    join = (
        f"import sys, ray; ray.init(address={ray_cluster.get_runtime_context().gcs_address!r}, log_to_driver=False, "
        f"runtime_env={{'env_vars': {{'PYTHONPATH': {root!r}}}}}); from curate.__main__ import main; "
        "sys.exit(main(['run', 'm.toml']))"
    )
    driver = f"mount -t tmpfs none corpus && cp -r staged/corpus/. corpus/ && {shlex.quote(sys.executable)} -c {shlex.quote(join)}"
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", driver],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": root},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    # both sources are unseen; which one a listing task reports first is a matter of timing
    said = rf"source image corpus/(images|shards\S*): the driver sees {re.escape(str(tmp_path))}/corpus/\S+ but the workers cannot"
    assert re.search(said, done.stderr), done.stderr[-2000:]
    assert not any((tmp_path / "corpus").iterdir())  # the tmpfs went with the driver's namespace
    assert not (tmp_path / "out" / "ledger").exists()  # no stage ran
