"""Failures outside the data (disk full, an output that cannot be written, a refused video, a bad
shard sample, a missing checkpoint or bucket) end a command with one clear line and a non-zero exit,
never a traceback. Each command runs as users run it: a subprocess."""

from __future__ import annotations

import errno
import io
import os
import resource
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args, limit_file_bytes: int = 0) -> subprocess.CompletedProcess:
    def file_size_limit():  # writes beyond the limit fail as on a full disk (EFBIG instead of ENOSPC)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_bytes, limit_file_bytes))

    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=file_size_limit if limit_file_bytes else None,
    )


def _one_clear_line(result, *expected: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]


@pytest.fixture
def manifest(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (96, 64), (40 * i, 90, 200)).save(images / f"i{i}.jpg", quality=95)
    path = tmp_path / "m.toml"
    path.write_text(
        f'name = "t"\nexecutor = "local"\n[output]\ndir = "{tmp_path / "out"}"\n'
        f'[[sources]]\nmodality = "image"\nuri = "{images}"\n[[stages]]\nname = "image_decode"\n'
    )
    return path


def test_run_with_an_output_that_cannot_be_made(manifest, tmp_path):
    (tmp_path / "a_file").write_text("x")
    result = _cli("curate", "run", str(manifest), "--quiet", f"--output.dir={tmp_path / 'a_file' / 'out'}")
    _one_clear_line(result, "a_file/out", "Not a directory")


def test_run_on_a_full_disk(manifest):
    result = _cli("curate", "run", str(manifest), "--quiet", limit_file_bytes=4000)
    _one_clear_line(result, "File too large")


def test_run_with_a_read_only_output(manifest, tmp_path):
    out = tmp_path / "readonly"
    out.mkdir()
    out.chmod(0o555)
    if os.access(out, os.W_OK):
        pytest.skip("this user writes into read-only folders (root)")
    result = _cli("curate", "run", str(manifest), "--quiet", f"--output.dir={out}")
    _one_clear_line(result, "Permission denied")


def test_run_on_a_missing_bucket(manifest, s3_server):
    result = _cli("curate", "run", str(manifest), "--quiet", "--sources.0.uri=s3://no-such-bucket/images")
    _one_clear_line(result, "s3://no-such-bucket/images", "NoSuchBucket")
    result = _cli("curate", "run", str(manifest), "--quiet", "--output.dir=s3://no-such-bucket/out")
    _one_clear_line(result, "NoSuchBucket")


def test_patchify_on_a_refused_video(tmp_path):
    video = tmp_path / "text.mp4"
    video.write_text("not a video")
    result = _cli("curate", "patchify", str(video), "--out", str(tmp_path / "x.npz"))
    _one_clear_line(result, "text.mp4", "not a readable video container")


def test_shards_stats_on_a_bad_sample(manifest, tmp_path):
    assert _cli("curate", "run", str(manifest), "--quiet").returncode == 0
    tar_path = next((tmp_path / "out" / "shards" / "image").glob("*.tar"))
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(tar_path, "w") as tar:
        for member, data in members:
            data = b"{broken" if member.name.endswith(".json") and member.name.startswith("i1") else data
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    result = _cli("shards", "stats", str(tmp_path / "out" / "shards"))
    _one_clear_line(result, tar_path.name, "unreadable json")


def test_release_of_a_missing_checkpoint(tmp_path):
    result = _cli("train.release", str(tmp_path / "no_checkpoint"), str(tmp_path / "release"))
    _one_clear_line(result, "no_checkpoint", "not a checkpoint")


def test_a_storage_error_raised_inside_a_ray_task_is_found_under_rays_wrappers():
    from ray.exceptions import RayTaskError

    from curate.__main__ import io_error

    cause = OSError(errno.ENOSPC, "No space left on device", "/out/shards/x.tar")
    in_task = RayTaskError("WriteShards", "Traceback (most recent call last): ...", cause).as_instanceof_cause()
    try:
        raise RuntimeError("Ray Data: a task failed") from in_task
    except RuntimeError as exc:
        assert io_error(exc) == "/out/shards/x.tar: No space left on device"
    assert io_error(ValueError("a bug keeps its traceback")) is None
