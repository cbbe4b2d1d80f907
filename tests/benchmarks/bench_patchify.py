"""Codec patchification benchmarks on the CPU, one core per clip (decoder and encoders single-threaded).

    .venv/bin/python tests/benchmarks/bench_patchify.py [--repeat 5] [--ablation]

Figures, each against a baseline measured in the same run on the same clip:
* P1  patchify (decode with vectors + energy maps + camera fit + top-K + patch gather) over
      plain PyAV decode of the same frames, H.264 at 256x256 and 1280x720 (goal <= 1.3);
      also over decode + scaling to the 256 grid (what any consumer of pixels pays);
* P2  the re-encode path (HEVC source -> in-memory H.264, GOP 16, no B, 1 ref) over plain decode;
* P3  the reference's way (libx265 re-encode: preset fast, crf 23, keyint 16, bframes 0, ref 1,
      then decode and residual scoring) over ours (goal >= 5x);
* P4  clips per second per core (patchify + shard bytes);
* P5  encoding choice for the video tokens: bytes per sample and decode ms per sample;
* G   ground-truth sweep: object coverage and background share over synthetic clips;
* A   (--ablation) the same for parameter variants (the calibration of the defaults).
Times are CPU seconds of this process (time.process_time; every codec and BLAS runs one thread,
so this is core-seconds, less disturbed by other jobs than wall time), least of --repeat runs.
Clips are synthetic (curate.demo.synthetic_video): textured photos, x264/x265 veryfast CRF 23.
"""

# ruff: noqa: E402  (thread limits must be set before numpy is imported)
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core per clip, as Ray sets for a 1-CPU task

import argparse
import io
import shutil
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from common import cpu_seconds, machine
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from curate.codec import PatchifyConfig, encode, patchify, tokens
from curate.codec.sampling import decode_clip, inspect
from curate.codec.selection import top_k
from curate.demo.synthetic_video import make_clip
from curate.media import open_video
from shards import fields
from shards.format import decode_npy, encode_npy


def decode_only(path: str, frames: int = 64) -> int:
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_count = 1
        n = 0
        for _ in c.decode(s):
            n += 1
            if n == frames:
                break
    return n


def decode_to_grid(path: str, frames: int = 64, size: int = 256) -> np.ndarray:
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_count = 1
        out = []
        for f in c.decode(s):
            out.append(f.reformat(size, size, "rgb24", interpolation="AREA").to_ndarray())
            if len(out) == frames:
                break
    return np.stack(out)


def reference_way(path: str, k: int = 2048) -> np.ndarray:
    """Decode, scale to 256, re-encode with the reference's libx265 settings, decode, score residuals.

    The reference reads residuals from a patched HEVC decoder we cannot ship; its per-frame work
    after decoding (|residual| summed per patch, global top-K) is reproduced on |Y_t - Y_t-1| of
    the re-encoded clip, which costs the same numpy work.
    """
    enc = av.CodecContext.create("libx265", "w")
    enc.width, enc.height, enc.pix_fmt, enc.time_base = 256, 256, "yuv420p", Fraction(1, 24)
    enc.options = {
        "preset": "fast",
        "crf": "23",
        "x265-params": "keyint=16:min-keyint=16:scenecut=0:bframes=0:ref=1:pools=none:frame-threads=1:log-level=error",
    }
    dec = av.CodecContext.create("hevc", "r")
    dec.thread_count = 1
    luma = []
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_count = 1
        for i, f in enumerate(c.decode(s)):
            g = f.reformat(256, 256, "yuv420p", interpolation="AREA")
            g.pts = i
            g.pict_type = av.video.frame.PictureType.NONE
            for p in enc.encode(g):
                luma += [d.to_ndarray()[:256] for d in dec.decode(p)]
            if i == 63:
                break
    for p in enc.encode(None):
        luma += [d.to_ndarray()[:256] for d in dec.decode(p)]
    luma += [d.to_ndarray()[:256] for d in dec.decode(None)]
    y = np.stack(luma).astype(np.int16)
    energy = np.zeros(y.shape, np.float32)
    energy[1:] = np.abs(np.diff(y, axis=0))
    energy[::16] = 0  # I-frames score zero in the reference's residual index
    scores = energy.reshape(len(y), 16, 16, 16, 16).sum(axis=(2, 4))
    return top_k(scores, k)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / max(mse, 1e-9))


def _encodings(result, path: str):
    """(label, bytes, decoder, reference pixels) for each way of storing the K selected patches."""
    clip, pos = result.clip, result.positions
    ycc = tokens.jpeg_ycbcr(tokens.gather(clip.y, clip.u, clip.v, pos, 16), clip.full_range, clip.bt709)
    rgb = tokens.to_rgb(ycc)  # (K, 16, 16, 3) the pixels every encoding must reproduce
    mosaic = tokens.mosaic(ycc)

    def jpeg(sub: str, quality: int = 90) -> bytes:
        buf = io.BytesIO()
        Image.frombytes("YCbCr", mosaic.shape[1::-1], mosaic.tobytes()).save(
            buf, format="JPEG", quality=quality, subsampling=sub
        )
        return buf.getvalue()

    def npz(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(buf, a=a)
        return buf.getvalue()

    def from_source(_: bytes) -> np.ndarray:
        frames = decode_to_grid(path)
        t, h, w = (pos[:, i].astype(np.intp) for i in range(3))
        rows, cols = h[:, None, None] * 16 + np.arange(16)[:, None], w[:, None, None] * 16 + np.arange(16)
        return frames[t[:, None, None], rows, cols]

    def unmosaic(b: bytes) -> np.ndarray:
        return fields.mosaic(b, len(pos))

    return [
        ("mosaic JPEG q90 4:2:0 (chosen)", jpeg("4:2:0"), unmosaic, rgb),
        ("mosaic JPEG q90 4:4:4", jpeg("4:4:4"), unmosaic, rgb),
        ("raw uint8 npy (K,16,16,3)", encode_npy(rgb), decode_npy, rgb),
        ("zlib npz (K,16,16,3)", npz(rgb), lambda b: np.load(io.BytesIO(b))["a"], rgb),
        ("source clip (+ pos.npy index)", Path(path).read_bytes(), from_source, rgb),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ablation", action="store_true", help="also score parameter variants on the ground-truth sets")
    args = ap.parse_args()
    cfg = PatchifyConfig()  # threads=1
    tmp = Path(tempfile.mkdtemp(prefix="bench_patchify_"))
    specs = {
        "h264_256": {"pan": (2, 1), "seed": 0},
        "h264_720p": {"size": (1280, 720), "pan": (2, 1), "seed": 1},
        "hevc_256": {"codec": "hevc", "pan": (2, 1), "seed": 0},
        "hevc_720p": {"codec": "hevc", "size": (1280, 720), "pan": (2, 1), "seed": 1},
    }
    clips = {}
    for name, spec in specs.items():
        clips[name] = str(tmp / f"{name}.mp4")
        make_clip(clips[name], **spec)
    print(f"machine: {machine('PyAV ' + av.__version__)}")
    print(f"repeat: {args.repeat} (least CPU seconds); load average at start: {os.getloadavg()[0]:.1f}\n")
    rows = []

    # P1 / P2: patchify over plain decode, and over decode + scale to the grid
    ours = {}
    for name, path in clips.items():
        result = patchify(path, cfg)
        with open_video(path) as c:
            source = inspect(c, cfg.min_side)
        ids, native = result.clip.frame_ids, result.facts["signal"] == "codec_mvs"
        t_ours = cpu_seconds(lambda p=path: patchify(p, cfg), args.repeat, reduce=min)
        t_own_decode = cpu_seconds(
            lambda p=path, s=source, i=ids, v=native: decode_clip(p, s, i, 256, "stretch", v), args.repeat, reduce=min
        )
        t_dec = cpu_seconds(lambda p=path: decode_only(p), args.repeat, reduce=min)
        t_grid = cpu_seconds(lambda p=path: decode_to_grid(p), args.repeat, reduce=min)
        ours[name] = t_ours
        signal = result.facts["signal"]
        fig = "P1" if name.startswith("h264") else "P2"
        rows.append(
            (
                fig,
                f"{name} ({signal})",
                f"{t_ours * 1e3:.1f} ms (of which decode + planes + vectors {t_own_decode * 1e3:.1f})",
                f"decode {t_dec * 1e3:.1f} ms / +grid {t_grid * 1e3:.1f} ms",
                f"{t_ours / t_dec:.2f} / {t_ours / t_grid:.2f}",
            )
        )

    # P3: the reference's way over ours, same source clip
    for name in ("h264_256", "h264_720p"):
        path = clips[name]
        t_ref = cpu_seconds(lambda p=path: reference_way(p), max(1, args.repeat // 2), reduce=min)
        rows.append(
            (
                "P3",
                f"{name}: x265 re-encode + scoring",
                f"{t_ref * 1e3:.1f} ms",
                f"ours {ours[name] * 1e3:.1f} ms",
                f"{t_ref / ours[name]:.1f}x faster",
            )
        )

    # P4: clips per second per core, shard bytes included
    path = clips["h264_256"]
    t_full = cpu_seconds(lambda: encode(patchify(path, cfg), cfg), args.repeat, reduce=min)
    rows.append(
        ("P4", "h264_256 patchify + shard bytes", f"{t_full * 1e3:.1f} ms", "-", f"{1 / t_full:.1f} clips/s/core")
    )
    path = clips["h264_720p"]
    t_full7 = cpu_seconds(lambda: encode(patchify(path, cfg), cfg), args.repeat, reduce=min)
    rows.append(
        ("P4", "h264_720p patchify + shard bytes", f"{t_full7 * 1e3:.1f} ms", "-", f"{1 / t_full7:.1f} clips/s/core")
    )

    print("| fig | case | ours | baseline | ratio |\n|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")

    # P5: encoding choice for one 2048-patch sample, on the moving-object clip (its sprite is
    # block noise: the worst case for JPEG) and on natural photo content (a static clip's fallback)
    still = str(tmp / "still.mp4")
    make_clip(still, static=True, seed=1)
    print("\n| P5 encoding (K=2048 of 64x16x16, 256 px) | bytes/sample | decode ms/sample | PSNR vs patches |")
    print("|---|---|---|---|")
    for content, path in (("noise sprite", clips["h264_256"]), ("photo", still)):
        result = patchify(path, cfg)
        for label, blob, decode, ref in _encodings(result, path):
            t = cpu_seconds(lambda b=blob, d=decode: d(b), args.repeat, reduce=min)
            print(f"| {content}: {label} | {len(blob):,} | {t * 1e3:.2f} | {psnr(decode(blob), ref):.1f} dB |")
    print(f"| pos.npy (int16 K x 3) | {len(encode_npy(result.positions)):,} | - | - |")
    print(f"| frames.jpg (4 whole photo frames, q90) | {len(encode(result, cfg)['frames_jpg']):,} | - | - |")

    # G: ground-truth sweep (coverage of object patches, share of kept patches on static background)
    print("\n| G case (12.5 % budget) | clips | object coverage min / mean | background share max / mean |")
    print("|---|---|---|---|")
    cases = {
        "h264, still camera": {"codec": "h264"},
        "h264, pan": {"codec": "h264", "pan": (2, 1)},
        "h264, fast pan (3,-2)": {"codec": "h264", "pan": (3, -2)},
        "hevc -> re-encode, pan": {"codec": "hevc", "pan": (-1, 2)},
        "h264, 2 objects, pan": {"codec": "h264", "pan": (1, -2), "objects": 2},
        "h264, flat sky (rocket), pan": {"codec": "h264", "pan": (2, 1), "background": "rocket"},
    }
    sets = {label: _ground_truth_set(tmp / f"g{i}", spec) for i, (label, spec) in enumerate(cases.items())}
    for label, clipset in sets.items():
        cov, bg = _score_set(clipset, cfg)
        print(f"| {label} | {len(clipset)} seeds | {cov} | {bg} |")
    if args.ablation:
        variants = {
            "defaults": {},
            "residual_floor 2 (reference: 1)": {"residual_floor": 2.0},
            "min_texture 0 (vectors of flat cells used)": {"min_texture": 0.0},
            "motion only (residual_weight 0)": {"residual_weight": 0.0},
            "residual only (motion_weight 0)": {"motion_weight": 0.0},
            "camera similarity (not median)": {"camera": "similarity"},
            "analysis at full resolution": {"analysis_scale": 1},
        }
        picked = (
            "h264, pan",
            "hevc -> re-encode, pan",
            "h264, 2 objects, pan",
            "h264, flat sky (rocket), pan",
        )
        print("\n| A ablation (coverage min/mean; background max/mean) | " + " | ".join(picked) + " |")
        print("|---" * (len(picked) + 1) + "|")
        for name, change in variants.items():
            c = PatchifyConfig(**change)
            print(f"| {name} | " + " | ".join("; ".join(_score_set(sets[p], c)) for p in picked) + " |")
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}")
    shutil.rmtree(tmp, ignore_errors=True)


def _ground_truth_set(prefix: Path, spec: dict, seeds: int = 4) -> list[tuple[str, np.ndarray]]:
    out = []
    for seed in range(seeds):
        path = f"{prefix}_{seed}.mp4"
        out.append((str(path), make_clip(path, seed=seed, **spec)))
    return out


def _score_set(clipset, cfg) -> tuple[str, str]:
    """Object coverage (patches >= half on the object) and background share (patches with no object pixel)."""
    cov, bg = [], []
    for path, mask in clipset:
        r = patchify(path, cfg)
        share = mask.reshape(64, 16, 16, 16, 16).mean(axis=(2, 4))
        kept = np.zeros(share.shape, bool)
        kept[tuple(r.positions.T.astype(np.intp))] = True
        cov.append((kept & (share >= 0.5)).sum() / (share >= 0.5).sum())
        bg.append((kept & (share == 0)).sum() / kept.sum())
    return f"{min(cov):.3f} / {np.mean(cov):.3f}", f"{max(bg):.3f} / {np.mean(bg):.3f}"


if __name__ == "__main__":
    main()
