"""What a run leaves in its output folder: outputs on another filesystem, reconciliation after the
corpus shrank, a --force that removes only the project's files, a run that keeps nothing, an early
stop when every input fails, one ledger schema, and file modes that follow the umask.

Small image corpora (real PNGs, some of them not images at all) under the local executor."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest
from PIL import Image

from curate.__main__ import main as curate_main
from curate.config import load_run
from curate.ledger import read_ledger
from curate.pipeline import RunStopped, run
from shards import storage
from shards.tools import verify

BROKEN = b"this is not an image"


def _png(i: int) -> bytes:
    pixels = np.random.default_rng(i).integers(0, 255, (72, 80, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _corpus(folder: Path, n: int, broken=(), modality_ext: str = "png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"im{i:03d}.{modality_ext}").write_bytes(BROKEN if i in broken else _png(i))
    return folder


def _manifest(tmp: Path, out: Path, sources: dict[str, Path], **top) -> str:
    lines = [
        f"{k} = {json.dumps(v)}" for k, v in {"name": "t", "executor": "local", "partition_size": 4, **top}.items()
    ]
    lines += ["[output]", f'dir = "{out}"']
    for modality, uri in sources.items():
        lines += ["[[sources]]", f'modality = "{modality}"', f'uri = "{uri}"']
    lines += ['[[stages]]\nname = "image_decode"\nsize = 64', '[[stages]]\nname = "ocr_text"']
    path = tmp / f"m{len(list(tmp.glob('m*.toml')))}.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _run(manifest: str, force: bool = False) -> dict:
    cfg, stages = load_run(manifest)
    return run(cfg, stages, force=force, progress=False)


def _input_rows(out: Path) -> pd.DataFrame:
    ledger = read_ledger(str(out))
    return ledger[ledger["parent"].isna() | (ledger["parent"] == "")]


# --- 1. outputs on another filesystem than the temporary folder ---------------------------------


@pytest.fixture
def other_filesystem(tmp_path):
    """A folder on a filesystem other than tmp_path's: a fresh tmpfs mount, else /dev/shm."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode == 0:
        yield mount
        subprocess.run(["umount", "-l", str(mount)], check=True)
        return
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip(f"no second filesystem: mount failed ({mounted.stderr.decode().strip()}) and no /dev/shm apart")
    folder = Path(tempfile.mkdtemp(dir=shm))
    yield folder
    subprocess.run(["rm", "-rf", str(folder)], check=True)


def test_outputs_on_another_filesystem_than_the_temporary_folder(tmp_path, other_filesystem, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # temporaries default to tmp_path's filesystem
    out = other_filesystem / "out"
    assert os.stat(tmp_path).st_dev != os.stat(other_filesystem).st_dev
    summary = _run(_manifest(tmp_path, out, {"image": _corpus(tmp_path / "c", 6)}))
    assert summary["kept"] == 6 and verify(str(out / "shards"))["ok"]
    assert not list(out.rglob(".*"))  # no temporary left beside the outputs


# --- 2 and 9. a corpus that shrinks: reconciliation, one ledger schema -------------------------------


def _read_as_one_table(out: Path) -> int:
    rows = len(pd.read_parquet(out / "ledger"))
    assert pads.dataset(str(out / "ledger"), format="parquet").to_table().num_rows == rows
    return rows


def test_a_shrunk_corpus_reconciles_shards_ledger_and_markers(tmp_path):
    corpus = _corpus(tmp_path / "c", 12, broken={9})  # one failure: other parts have no reason, no detail
    pages = _corpus(tmp_path / "pages", 3)
    for i in range(3):
        (pages / f"im{i:03d}.txt").write_text(f"page {i} says hello")
    out = tmp_path / "out"
    first = _run(_manifest(tmp_path, out, {"image": corpus, "ocr": pages}))
    assert (first["kept"], first["failed"]) == (14, 1)
    assert _read_as_one_table(out) == 15  # parts with and without a failure read as one table

    for i in range(10):
        (corpus / f"im{i:03d}.png").unlink()  # 10 inputs fewer: the last two move to partition 0
    again = _run(_manifest(tmp_path, out, {"image": corpus}))  # and the OCR source is gone
    assert (again["inputs"], again["kept"], again["failed"]) == (2, 2, 0)
    rows = _input_rows(out)
    assert sorted(rows["key"].str[:5]) == ["im010", "im011"] and len(read_ledger(str(out))) == 2
    assert _read_as_one_table(out) == 2
    assert sorted(p.name for p in (out / "_partitions").iterdir()) == ["000000.json"]
    assert sorted(p.name for p in (out / "ledger").iterdir()) == ["part-000000.parquet"]
    assert sorted(p.name for p in (out / "shards").rglob("*") if p.is_file()) == [
        "corpus_image-v1-000000.tar",
        "index.json",
    ]
    assert verify(str(out / "shards"))["ok"]
    assert _run(_manifest(tmp_path, out, {"image": corpus}))["kept"] == 2  # and resumes from there


def test_on_s3_a_shrunk_corpus_reconciles_and_force_keeps_other_objects(tmp_path, s3_server):
    storage.s3_client().create_bucket(Bucket="relout")
    out = "s3://relout/run"
    corpus = _corpus(tmp_path / "c", 10)
    _run(_manifest(tmp_path, out, {"image": corpus}))
    storage.write_bytes(f"{out}/notes.txt", b"mine")
    for i in range(6):
        (corpus / f"im{i:03d}.png").unlink()
    assert _run(_manifest(tmp_path, out, {"image": corpus}))["kept"] == 4
    names = sorted(uri[len(out) + 1 :] for uri, _ in storage.list_files(out))
    assert [n for n in names if n.startswith(("_partitions", "ledger", "shards"))] == [
        "_partitions/000000.json",
        "ledger/part-000000.parquet",
        "shards/image/corpus_image-v1-000000.tar",
        "shards/image/index.json",
    ]
    assert _run(_manifest(tmp_path, out, {"image": corpus}), force=True)["kept"] == 4
    assert storage.read_bytes(f"{out}/notes.txt") == b"mine"


# --- 3. --force removes what the project wrote, nothing else ----------------------------------------


def test_force_removes_only_what_the_project_wrote(tmp_path):
    out = tmp_path / "out"
    inside = _corpus(out / "corpus", 4)
    manifest = _manifest(tmp_path, out, {"image": inside})
    _run(manifest)
    with pytest.raises(ValueError, match="holds inputs of this run"):
        _run(manifest, force=True)
    assert len(list(inside.iterdir())) == 4 and (out / "_partitions" / "000000.json").exists()

    outside = tmp_path / "keep"
    outside.mkdir()
    (outside / "part-000009.parquet").write_bytes(b"not ours to delete")
    corpus = _corpus(tmp_path / "c", 6)
    manifest = _manifest(tmp_path, out, {"image": corpus})
    _run(manifest)
    (out / "notes.txt").write_text("mine")
    (outside / "empty").mkdir()
    shutil.rmtree(out / "_work")  # the run's listing is there: replaced by a link
    (out / "_work").symlink_to(outside)  # a project folder linked elsewhere: neither entered nor emptied
    (out / "ledger" / "linked").symlink_to(outside)
    (out / "_partitions" / "000007.json").write_text("{}")  # a stale marker of ours
    summary = _run(manifest, force=True)
    assert summary["kept"] == 6
    assert (out / "notes.txt").read_text() == "mine" and len(list(inside.iterdir())) == 4
    assert (outside / "part-000009.parquet").read_bytes() == b"not ours to delete" and (outside / "empty").is_dir()
    assert not (out / "_partitions" / "000007.json").exists()


# --- 7. a run that keeps nothing, and one that fails from the start --------------------------------


def test_a_run_that_keeps_nothing_reports_why(tmp_path, capsys):
    out = tmp_path / "out"
    manifest = _manifest(tmp_path, out, {"image": _corpus(tmp_path / "c", 3, broken={0, 1, 2})})
    assert curate_main(["run", manifest, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "image_decode/" in printed and "kept" in printed
    page = (out / "report.html").read_text()
    assert "Every input was kept" not in page and "image_decode/" in page


def test_the_report_reads_shards_only_for_its_galleries_without_concept_labels(tmp_path, monkeypatch):
    """Only assign_concepts writes cls.npy: without it the report's concept section reads nothing (it read
    up to 20 shards per modality, a cost that grew with the run); the galleries read at most two per set."""
    import curate.report

    read = []
    real = curate.report.iter_tar
    monkeypatch.setattr(curate.report, "iter_tar", lambda data, uri: read.append(uri) or real(data, uri))
    out = tmp_path / "out"
    _run(_manifest(tmp_path, out, {"image": _corpus(tmp_path / "c", 6)}, partition_size=1))
    shards = sorted((out / "shards" / "image").glob("*.tar"))
    assert len(shards) == 6 and read == [str(s) for s in shards[:2]]  # the gallery's two, once each
    assert "No concept labels in this run" in (out / "report.html").read_text()


def test_stops_early_when_the_first_inputs_all_fail_and_redoes_them_when_rerun(tmp_path, capsys):
    corpus = _corpus(tmp_path / "c", 12, broken=set(range(12)))
    out = tmp_path / "out"
    manifest = _manifest(tmp_path, out, {"image": corpus}, partition_size=2, stop_after_failing=4)
    with pytest.raises(RunStopped, match=r"the first 4 inputs all failed.*image_decode/\w+ x4"):
        _run(manifest)
    assert len(list((out / "_partitions").iterdir())) == 2  # of 6 partitions
    assert curate_main(["run", manifest, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "the first 4 inputs all failed" in err and "; e.g. image_decode/" in err

    _corpus(corpus, 12)  # the cause is fixed: the same inputs, now readable
    assert _run(manifest)["kept"] == 12  # partitions finished before the stop are redone


# --- file modes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_output_files_follow_the_umask(tmp_path, umask):
    saved = os.umask(umask)
    try:
        out = tmp_path / "out"
        _run(_manifest(tmp_path, out, {"image": _corpus(tmp_path / "c", 3)}))
    finally:
        os.umask(saved)
    modes = {p.relative_to(out).as_posix(): p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()}
    assert "shards/image/corpus_image-v1-000000.tar" in modes and "ledger/part-000000.parquet" in modes
    assert set(modes.values()) == {0o666 & ~umask}, modes
