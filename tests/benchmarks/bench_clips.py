"""Clips of a long video: codec_patchify over every clip against plain PyAV decode of the same frames.

    .venv/bin/python tests/benchmarks/bench_clips.py [--minutes 3] [--size 1280x720] [--repeat 5]

The film: ``--shots`` distinct 10-second H.264 shots (``curate.demo.synthetic_video``: textured
photos, panning, moving sprites, x264 CRF 23, GOP 48, each shot its own seed) stream-copied in turn
until ``--minutes`` are reached, so it has a hard cut (on a keyframe) every 10 s, as edited footage
does. Figures (issue 25, V3):

* clips per core-second of ``codec_patchify`` with its defaults (64-frame clips, every clip, shots
  split at cuts, 12.5 % budget, shard bytes encoded), one decoder thread;
* its CPU time over plain PyAV decode (one thread) of the frames the clips cover (goal V3 <= 1.3);
  the same with ``deblock=False`` (the decoder skips its loop filter);
* the stage's decoding alone (``sampling.decode_clip`` of every clip: motion-vector export, the vectors
  read, frames scaled to the grid, no analysis or encoding) over the same plain decode: the floor of
  the ratio while clips are decoded this way;
* how many clips the film gave and why the rest were not taken.

CPU seconds of this process (``time.process_time``), every codec and BLAS on one thread. The cases run
in turn, ``--repeat`` rounds after one warm-up round, so a burst of load elsewhere hits every case
alike; ratios are given of the least times and as the median of each round's own ratio, with the load
average at the start and the end.
"""

# ruff: noqa: E402  (thread limits must be set before numpy is imported)
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from common import machine

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from curate.codec import sampling
from curate.codec.patchify import _plan
from curate.codec.sampling import inspect
from curate.demo.synthetic_video import make_clip
from curate.media import open_video
from curate.stages.codec import CodecPatchify


def make_film(path: Path, minutes: float, size: tuple[int, int], shots: int, fps: int = 24) -> int:
    """Render ``shots`` 10-s shots and stream-copy them in turn to ``minutes``; returns the film's frames."""
    files = [path.with_name(f"shot{n}.mp4") for n in range(shots)]
    for n, seg in enumerate(files):
        make_clip(seg, size=size, frames=10 * fps, fps=fps, pan=(2 + n, 1), gop=2 * fps, seed=11 + n, objects=2)
    segments = []
    for seg in files:
        with av.open(str(seg)) as src:
            s = src.streams.video[0]
            packets = [(p.pts, p.dts, p.duration, p.is_keyframe, bytes(p)) for p in src.demux(s) if p.size]
            segments.append((packets, s.duration or packets[-1][0] + packets[0][2], s.time_base or Fraction(1, fps)))
    total, offset = 0, 0
    with av.open(str(files[0])) as first, av.open(str(path), "w", format="mp4") as out:
        o = out.add_stream_from_template(first.streams.video[0])
        for i in range(round(minutes * 6)):
            packets, span, time_base = segments[i % shots]
            for pts, dts, duration, key, data in packets:
                packet = av.Packet(data)
                packet.pts, packet.dts, packet.duration = pts + offset, dts + offset, duration
                packet.is_keyframe, packet.time_base, packet.stream = key, time_base, o
                out.mux(packet)
            offset += span
            total += len(packets)
    for seg in files:
        seg.unlink()
    return total


def plain_decode(path: str, clips=None) -> int:
    """Frames decoded on one thread: the whole film, or the frames of ``clips`` (display indices) in the
    cheapest way: each run of consecutive frames reached by one seek to the keyframe before it and decoded
    through. What any reader of those frames pays."""
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_count = 1
        if clips is None:
            return sum(1 for _ in c.decode(s))
        pts = inspect(c, 1).pts
        covered = np.unique(np.concatenate([np.asarray(i) for i in clips]))
        runs = np.split(covered, np.flatnonzero(np.diff(covered) > 1) + 1)
        n = 0
        for run in runs:
            first, last = int(pts[run[0]]), int(pts[run[-1]])
            c.seek(first, stream=s)
            for frame in c.decode(s):
                n += first <= frame.pts <= last
                if frame.pts >= last:
                    break
        return n


def stage_decode(path: str, stage: CodecPatchify, clips: list[list[int]]) -> int:
    """Decode the frames ``clips`` (display indices) as the stage does, nothing else: a clip that follows
    the one before goes on from its decoder, any other is reached by a seek. Returns the frames."""
    with open_video(path) as container:
        source, native, _, _ = _plan(container, stage)
        n, clip = 0, None
        for ids in clips:
            carry = clip if clip is not None and clip.frame_ids[-1] + 1 == ids[0] else None
            clip = sampling.decode_clip(
                path, source, np.asarray(ids), stage.size, stage.fit, native, 1, container, carry
            )
            n += len(clip.frame_ids)
        return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    stage, fast = CodecPatchify(), CodecPatchify(deblock=False)
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        film = Path(tmp, "film.mp4")
        frames = make_film(film, args.minutes, size, args.shots)
        video = {"key": "film", "uri": str(film), "meta": {"modality": "video"}}
        rows = stage.process_row(video)
        clips = [r for r in rows if r.get("status") == "live"]
        ids = [r["meta"]["codec"]["frame_ids"] for r in clips]
        cases = {
            "plain": lambda: plain_decode(str(film), ids),
            "ours": lambda: stage.process_row(video),
            "no_deblock": lambda: fast.process_row(video),
            "decode": lambda: stage_decode(str(film), stage, ids),
            "whole": lambda: plain_decode(str(film)),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for round_ in range(args.repeat + 1):  # the first round warms up
            for name, fn in cases.items():
                start = time.process_time()
                fn()
                if round_:
                    times[name].append(time.process_time() - start)
        covered = plain_decode(str(film), ids)
    load.append(os.getloadavg()[0])
    least = {name: min(t) for name, t in times.items()}

    def ratio(name: str) -> str:
        per_round = statistics.median(a / b for a, b in zip(times[name], times["plain"], strict=True))
        return f"{least[name] / least['plain']:.2f} (median of rounds {per_round:.2f})"

    summary = rows[0]["meta"].get("clips", {})
    t_ours = least["ours"]
    print(machine(f"load average {load[0]:.1f} at the start, {load[1]:.1f} at the end"))
    print(f"film: {args.size} H.264, {args.minutes:g} min, {frames} frames, a cut every 10 s (GOP 48)")
    print(f"clips: {len(clips)} taken ({covered} frames), not taken {summary.get('not_taken', {})}")
    print(f"{args.repeat} interleaved rounds, least CPU time of each case:")
    print(f"codec_patchify, every clip: {t_ours:.2f} core-s -> {len(clips) / t_ours:.2f} clips/core-s")
    print(f"plain PyAV decode of the clips' frames: {least['plain']:.2f} core-s (whole film: {least['whole']:.2f})")
    print(f"V3 ratio ours / plain decode of the same frames: {ratio('ours')} (goal <= 1.3)")
    print(f"  with deblock=False: {least['no_deblock']:.2f} core-s, ratio {ratio('no_deblock')}")
    print(f"the stage's decoding alone (vectors, grid scaling): {least['decode']:.2f} core-s, {ratio('decode')}")
    out = {"clips": len(clips), "frames": covered, "load": load, "times": times}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
