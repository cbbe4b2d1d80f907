"""Video stages stream their source: from a local path or a seekable ranged S3 reader, never the whole
file in memory, with the same rows (facts, tokens, positions, hashes, digest) as from bytes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from curate.demo.synthetic_video import make_clip
from curate.stage import new_rows, run_in_process, to_rows
from curate.stages.codec import CodecPatchify
from curate.stages.dedup import DedupSignatures
from curate.stages.video import VideoProbe
from shards import storage

ROOT = Path(__file__).resolve().parents[2]
STAGES = (VideoProbe(), CodecPatchify(budget=0.0625, frames=16, max_clips=2), DedupSignatures(exact=True))


def _remux(src: Path, dst: Path, copies: int = 1, **options) -> None:
    """Stream-copy ``src`` ``copies`` times end to end into ``dst`` (mp4 without +faststart: the index
    goes at the end of the file, so a demuxer seeks there first)."""
    with av.open(str(src)) as i:
        s = i.streams.video[0]
        packets = [(p.pts, p.dts, p.duration, p.is_keyframe, bytes(p)) for p in i.demux(s) if p.size]
        span = s.duration or max(p[0] for p in packets) + packets[0][2]
        with av.open(str(dst), "w", options=options) as o:
            out = o.add_stream_from_template(s)
            for k in range(copies):
                for pts, dts, duration, key, data in packets:
                    packet = av.Packet(data)
                    packet.pts, packet.dts, packet.duration = pts + k * span, dts + k * span, duration
                    packet.is_keyframe, packet.time_base, packet.stream = key, s.time_base or Fraction(1, 24), out
                    o.mux(packet)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("streaming")
    front = root / "moov_front.mp4"  # make_clip writes +faststart: the index first
    make_clip(front, size=(320, 256), frames=96, pan=(2, 1), gop=24, seed=3)
    _remux(front, root / "moov_end.mp4")
    _remux(front, root / "stream.ts")  # MPEG-TS: seeks land by estimated byte offsets, clips may reopen
    hevc = root / "hevc.mkv"
    make_clip(hevc, codec="hevc", size=256, frames=64, gop=16, seed=4)  # the re-encode path
    return {p.name: p for p in (front, root / "moov_end.mp4", root / "stream.ts", hevc)}


@pytest.fixture()
def bucket(s3_server):
    client = storage.s3_client()
    name = "ovforge-stream"
    client.create_bucket(Bucket=name)
    yield name
    for obj in client.list_objects_v2(Bucket=name).get("Contents", []):
        client.delete_object(Bucket=name, Key=obj["Key"])
    client.delete_bucket(Bucket=name)


def _run(uri: str) -> dict:
    rows = [{"key": "v", "uri": uri, "modality": "video", "partition": 0}]
    return to_rows(run_in_process(list(STAGES), new_rows(rows)))[-1]  # the last clip: a seek, or a reopen


def _no_whole_reads(monkeypatch):
    real = storage.read_bytes

    def read_bytes(uri):
        if Path(uri).suffix in (".mp4", ".ts", ".mkv"):
            raise AssertionError(f"a video was read whole: {uri}")
        return real(uri)

    monkeypatch.setattr(storage, "read_bytes", read_bytes)


def _from_bytes(monkeypatch):
    """The stages as they were: every open served from the whole file read into bytes."""
    real = storage.read_bytes
    monkeypatch.setattr(storage, "open_media", lambda uri, *a: io.BytesIO(real(uri)))


def _comparable(row: dict) -> dict:
    assert row["status"] == "live", (row["reason"], row["detail"])
    meta = {k: v for k, v in row["meta"].items() if k != "_seconds"}  # stage timings
    return {"meta": meta, **{k: row[k] for k in ("patches_jpg", "pos_npy", "frames_jpg", "video_hashes")}}


@pytest.mark.parametrize("name", ["moov_front.mp4", "moov_end.mp4", "stream.ts", "hevc.mkv"])
def test_stages_give_the_same_row_from_a_path_from_s3_and_from_bytes(videos, bucket, name, monkeypatch):
    path = videos[name]
    storage.put_file(str(_copy(path)), f"s3://{bucket}/{name}")
    with monkeypatch.context() as m:
        _no_whole_reads(m)
        local = _comparable(_run(str(path)))
        remote = _comparable(_run(f"s3://{bucket}/{name}"))
    with monkeypatch.context() as m:
        _from_bytes(m)
        whole = _comparable(_run(str(path)))
    assert local == whole  # bit-identical: facts, codec facts, patches, positions, frames, frame hashes
    assert remote == whole
    assert local["meta"]["source_blake3"] == storage.digest(path.read_bytes())
    assert local["meta"]["codec"]["k"] > 0 and len(local["video_hashes"]) > 0
    # the dedup stage's own digest (no probe before it) streams too, locally and from S3
    signs = []
    with monkeypatch.context() as m:
        _no_whole_reads(m)
        for uri in (str(path), f"s3://{bucket}/{name}"):
            row = to_rows(
                run_in_process(
                    [DedupSignatures()], new_rows([{"key": "v", "uri": uri, "modality": "video", "partition": 0}])
                )
            )[0]
            assert row["meta"]["dedup"]["blake3"] == local["meta"]["source_blake3"]
            signs.append(row["video_hashes"])  # the whole video's (no codec facts: no clip range)
        assert signs[0] == signs[1] and len(signs[0]) > len(local["video_hashes"])


def _copy(path: Path) -> Path:
    """put_file moves its input: hand it a copy."""
    copy = path.with_name(f".upload-{path.name}")
    copy.write_bytes(path.read_bytes())
    return copy


def test_the_seekable_s3_reader_returns_the_bytes_of_random_seeks_and_reads(bucket, tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, 60_001, dtype=np.uint8).tobytes()
    local = tmp_path / "r.bin"
    local.write_bytes(data)
    storage.write_bytes(f"s3://{bucket}/r.bin", data)
    with open(local, "rb") as want, storage.open_media(f"s3://{bucket}/r.bin", block=4096, blocks=2) as got:
        assert got.seekable() and got.readable()
        for _ in range(200):
            whence = int(rng.integers(0, 3))
            offset = int(rng.integers(0, len(data) + 3000)) - (len(data) if whence == 2 else 0)
            if whence == 1:
                offset = int(rng.integers(-want.tell(), 10_000))
            assert got.seek(offset, whence) == want.seek(offset, whence)
            n = int(rng.choice([1, 7, 4095, 4096, 4097, 9000, -1]))
            assert got.read(n) == want.read(n)
            assert got.tell() == want.tell()
        got.seek(0)
        assert got.read() == data
        raw = got.raw
        assert len(raw.cache) <= 2  # at most `blocks` blocks held
        assert raw.gets >= len(data) // 4096  # every byte came through ranged GETs of one block
    assert raw.closed and not raw.cache
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        storage.open_media(f"s3://{bucket}/nope.mp4")
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        storage.open_media(str(tmp_path / "nope.mp4"))


def test_a_file_digest_streams_in_windows(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "DIGEST_WINDOW", 1 << 16)  # mmap's granularity (4 KiB) divides it
    data = bytes(range(256)) * 1000 + b"tail"  # 256 kB: four windows and a short fifth
    (tmp_path / "f.bin").write_bytes(data)
    assert storage.file_digest(str(tmp_path / "f.bin")) == storage.digest(data)


MEASURE = r"""
import json, sys
from curate.stage import new_rows, run_in_process, to_rows
from curate.stages.codec import CodecPatchify
from curate.stages.dedup import DedupSignatures
from curate.stages.video import VideoProbe
peak = lambda: int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM"))) * 1024  # not ru_maxrss: Linux keeps it across exec (the parent's peak)
stages = [VideoProbe(), CodecPatchify(max_clips=2), DedupSignatures()]  # two clips: the read, not every clip
rows = lambda uri: new_rows([{"key": "v", "uri": uri, "modality": "video", "partition": 0}])
run_in_process(stages, rows(sys.argv[2]))  # warm-up on a short clip: libraries, codecs, allocator pools
base = peak()
row = to_rows(run_in_process(stages, rows(sys.argv[1])))[0]
print(json.dumps({"base": base, "peak": peak(), "status": row["status"], "detail": row["detail"]}))
"""


def test_the_stages_hold_far_less_than_a_large_file(tmp_path):
    """A 200 MB film: the stages' peak resident memory grows by under half its size over a warm-up on a
    short clip (reading it whole would add all of it); ``VmHWM`` counts every resident page,
    mapped file pages included."""
    segment = tmp_path / "segment.mp4"
    make_clip(segment, size=(320, 256), frames=48, gop=24, crf=0, seed=5)  # lossless: ~1 MB a second
    copies = 1 + (200 << 20) // segment.stat().st_size
    film = tmp_path / "film.mp4"
    _remux(segment, film, copies)
    size = film.stat().st_size
    assert size >= 200e6
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(film), str(segment)], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["status"] in ("live", "split"), got["detail"]
    added = got["peak"] - got["base"]
    print(
        f"film {size / 2**20:.0f} MiB: peak RSS {got['peak'] / 2**20:.0f} MiB, {added / 2**20:.0f} MiB over the warm-up"
    )
    assert added < size / 2, (added, size)
