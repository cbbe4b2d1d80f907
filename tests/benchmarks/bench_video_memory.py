"""Peak worker memory of the video stages on a long film: streamed reads against whole-file reads.

    .venv/bin/python tests/benchmarks/bench_video_memory.py [--minutes 120] [--size 1920x1080] [--s3]

A short H.264 segment is rendered (``curate.demo.synthetic_video``: a textured photo, panning, one
moving object, x264 CRF 23, GOP 48) and stream-copied end to end into one long mp4 (``--minutes``
of it; the mp4 index goes at the end of the file, as a muxer writes it without ``+faststart``, so
the demuxer must seek to the end first). A fresh child process then runs ``video_probe``,
``codec_patchify`` and ``dedup_signatures`` (default settings: every frame decoded, 256 sampled)
on the file and reports its peak RSS (``VmHWM``, resident pages of every kind, so a
memory-mapped file would count too; not ``ru_maxrss``, which Linux carries over ``exec`` from the parent). ``whole`` emulates the code before streaming: the same
stages, with every open served from the file read into bytes once (``storage.read_bytes``, as each
of the three stages did before; ``--whole probe``: video_probe alone, whose peak already holds the
file). ``--s3`` repeats the streamed run from a
local S3 server (moto, in this parent process) through the seekable ranged reader.
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
from common import machine

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from curate.demo.synthetic_video import make_clip

CHILD = r"""
import io, json, sys, time
from curate.stage import new_rows, run_in_process, to_rows
from curate.stages.codec import CodecPatchify
from curate.stages.dedup import DedupSignatures
from curate.stages.video import VideoProbe
from shards import storage

mode, uri = sys.argv[1], sys.argv[2]
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child would report its parent's peak
peak = lambda: int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM"))) / 1024
base = peak()
if mode == "whole":  # the former reads: the whole file as bytes (shared by every open, as one stage held it)
    held = {}
    storage.open_media = lambda u, *a: io.BytesIO(held[u] if u in held else held.setdefault(u, storage.read_bytes(u)))
start = time.perf_counter()
stages = [VideoProbe(), CodecPatchify(max_clips=2), DedupSignatures()][: 1 if sys.argv[3] == "probe" else 3]
rows = to_rows(run_in_process(stages, new_rows([{"key": "k", "uri": uri, "modality": "video", "partition": 0}])))
row, live = rows[0], [r for r in rows if r["status"] == "live"]  # the video's row (split into clips) and its clips
assert live, (row["reason"], row["detail"])
facts = {"frames": row["meta"]["frames_present"], "blake3": row["meta"]["source_blake3"][:16]}
if len(stages) == 3:
    facts.update(clips=len(live), k=live[0]["meta"]["codec"]["k"], video_hashes=len(live[0]["video_hashes"]) // 32)
print(json.dumps({"base_mib": base, "peak_mib": peak(), "seconds": time.perf_counter() - start, **facts}))
"""


def make_film(path: Path, minutes: float, size: tuple[int, int], segment_s: int = 10, fps: int = 24) -> float:
    """Render one segment, then stream-copy it ``minutes * 60 / segment_s`` times into ``path``; seconds taken."""
    start = time.perf_counter()
    segment = path.with_name("segment.mp4")
    make_clip(segment, size=size, frames=segment_s * fps, fps=fps, pan=(3, 1), gop=2 * fps, seed=7, object_size=0.2)
    with av.open(str(segment)) as src:
        s = src.streams.video[0]
        packets = [(p.pts, p.dts, p.duration, p.is_keyframe, bytes(p)) for p in src.demux(s) if p.size]
        span = s.duration or (max(p[0] for p in packets) + packets[0][2])
        with av.open(str(path), "w", format="mp4") as out:
            o = out.add_stream_from_template(s)
            for i in range(round(minutes * 60 / segment_s)):
                for pts, dts, duration, key, data in packets:
                    packet = av.Packet(data)
                    packet.pts, packet.dts, packet.duration = pts + i * span, dts + i * span, duration
                    packet.is_keyframe, packet.time_base, packet.stream = key, s.time_base or Fraction(1, fps), o
                    out.mux(packet)
    segment.unlink()
    return time.perf_counter() - start


def child(mode: str, uri: str, env: dict | None = None, stages: str = "all") -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **(env or {}))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, uri, stages], capture_output=True, text=True, env=env, cwd=ROOT
    )
    if out.returncode:
        raise SystemExit(f"{mode} child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=120.0)
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--s3", action="store_true", help="also stream it from a local S3 server (moto)")
    parser.add_argument("--film", help="reuse this film instead of making one")
    parser.add_argument("--no-stream", action="store_true", help="only the former run (and --s3)")
    parser.add_argument("--whole", choices=["all", "probe"], default="all", help="stages of the former run")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        film = Path(args.film) if args.film else Path(tmp, "film.mp4")
        made = 0.0 if args.film else make_film(film, args.minutes, size)
        mib = film.stat().st_size / 2**20
        with av.open(str(film)) as c:
            s = c.streams.video[0]
            desc = f"{s.codec_context.name} {s.width}x{s.height}, {float(s.duration * s.time_base) / 60:.1f} min"
        print(machine())
        print(f"film: {desc}, {mib:,.0f} MiB, bit rate {film.stat().st_size * 8 / (args.minutes * 60) / 1e6:.1f} Mb/s")
        print(f"  (made in {made:.0f} s)" if made else "  (reused)")
        rows = [] if args.no_stream else [("streamed from the local file", child("stream", str(film)))]
        rows.append((f"whole file into bytes (former), {args.whole}", child("whole", str(film), stages=args.whole)))
        if args.s3:
            rows.append(("streamed from S3 (moto, loopback)", _s3_run(film)))
        print(f"{'run':38s} {'peak RSS MiB':>12s} {'/ file':>7s} {'after imports':>13s} {'added':>6s} {'s':>5s}  facts")
        for name, r in rows:
            facts = {k: v for k, v in r.items() if k not in ("base_mib", "peak_mib", "seconds")}
            print(
                f"{name:38s} {r['peak_mib']:12,.0f} {r['peak_mib'] / mib:7.3f} {r['base_mib']:13,.0f} "
                f"{r['peak_mib'] - r['base_mib']:6,.0f} {r['seconds']:5.0f}  {facts}"
            )
        if not args.no_stream:
            print(f"ratio streamed / whole-file peak: {rows[0][1]['peak_mib'] / rows[1][1]['peak_mib']:.3f}")


def _s3_run(film: Path) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from moto.server import ThreadedMotoServer
    from ports import free_port

    from shards import storage

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    os.environ.update(env)
    try:
        storage.s3_client().create_bucket(Bucket="bench")
        storage.s3_client().upload_file(str(film), "bench", "film.mp4")
        return child("stream", "s3://bench/film.mp4", env)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
