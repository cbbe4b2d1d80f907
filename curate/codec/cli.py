"""``python -m curate patchify VIDEO``: select one clip's codec tokens and show them.

Writes an .npz (``positions`` int16 (K, 3) of (t, h, w), ``scores`` float32 (T, 16, 16),
``frame_ids``, ``facts`` as JSON text), optionally a preview picture of every frame with the
kept patches lit and the rest dimmed, and prints a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
from PIL import Image

from curate.codec import selection, tokens
from curate.codec.patchify import PatchifyConfig, patchify
from curate.media import VideoError


def build_parser() -> argparse.ArgumentParser:
    d = PatchifyConfig()
    p = argparse.ArgumentParser(
        prog="python -m curate patchify",
        description="Select the patches of one clip that carry motion and residual (codec patchification), "
        "or the whole frames of chunk-wise patchification, and write their (t, h, w) positions.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("video", help="video file (H.264 gives vectors directly; HEVC/VP9/AV1 follow --hevc-policy)")
    p.add_argument("--out", required=True, help="output .npz: positions, scores, frame_ids, facts")
    p.add_argument("--preview", help="optional .png: frames in a grid, kept patches lit, the rest dimmed")
    p.add_argument("--mode", choices=("codec", "chunk"), default="codec", help="codec top-K or N whole frames")
    p.add_argument("--chunks", type=int, default=8, help="chunk mode: whole frames, one per temporal bin")
    p.add_argument("--budget", type=float, default=d.budget, help="fraction of T x 16 x 16 patches kept (0.031-0.25)")
    p.add_argument("--frames", type=int, default=d.frames, help="frames per clip")
    p.add_argument("--stride", type=int, default=d.stride, help="take every n-th frame")
    p.add_argument("--fps", type=float, default=d.fps, help="sample at this frame rate instead of --stride")
    p.add_argument("--clip", type=int, default=d.clip, help="which clip of a long video (each follows the one before)")
    p.add_argument("--size", type=int, default=d.size, help="codec grid side in pixels")
    p.add_argument("--fit", choices=("stretch", "pad"), default=d.fit, help="pad keeps the aspect ratio")
    p.add_argument("--first-frame", choices=("score", "whole"), default=d.first_frame, help="frame 0 policy")
    p.add_argument("--camera", choices=("median", "similarity", "none"), default=d.camera, help="camera motion model")
    p.add_argument("--hevc-policy", choices=("reencode", "difference", "refuse"), default=d.hevc_policy)
    p.add_argument("--centre-prior", type=float, default=d.centre_prior, help="centre weighting strength")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = PatchifyConfig(
            budget=args.budget,
            frames=args.frames,
            stride=args.stride,
            fps=args.fps,
            clip=args.clip,
            size=args.size,
            fit=args.fit,
            first_frame=args.first_frame,
            camera=args.camera,
            hevc_policy=args.hevc_policy,
            centre_prior=args.centre_prior,
        )
    except ValueError as exc:
        parser.error(str(exc))
    try:
        return _patchify(args, cfg)
    except VideoError as exc:  # the video is refused: say why, as the pipeline's ledger would
        parser.exit(1, f"error: {exc if args.video in str(exc) else f'{args.video}: {exc}'}\n")
    except OSError as exc:  # the video cannot be read, or the outputs cannot be written
        parser.exit(1, f"error: {exc}\n")


def _patchify(args, cfg: PatchifyConfig) -> int:
    start = time.perf_counter()
    result = patchify(args.video, cfg)
    seconds = time.perf_counter() - start
    positions = result.positions
    if args.mode == "chunk":
        t = len(result.clip.frame_ids)
        positions = selection.chunk_positions(args.chunks, cfg.size // cfg.patch, t)
    facts = dict(result.facts, mode=args.mode, k=int(len(positions)))
    np.savez(
        args.out,
        positions=positions,
        scores=result.scores,
        frame_ids=result.clip.frame_ids,
        facts=json.dumps(facts),
        config=json.dumps(dataclasses.asdict(cfg)),
    )
    if args.preview:
        Image.fromarray(preview(result, positions, cfg.patch)).save(args.preview)
    summary = {
        "video": args.video,
        "out": args.out,
        "mode": args.mode,
        "k": int(len(positions)),
        "frames": len(result.clip.frame_ids),
        "codec": facts["codec"],
        "signal": facts["signal"],
        "selection": facts["selection"] if args.mode == "codec" else "chunk",
        "seconds": round(seconds, 4),
    }
    print(json.dumps(summary))
    return 0


def preview(result, positions: np.ndarray, patch: int, cols: int = 8, dim: float = 0.3) -> np.ndarray:
    """All frames in a ``cols``-wide grid at half size; kept patches at full brightness."""
    clip = result.clip
    t, size = clip.y.shape[0], clip.y.shape[1]
    chroma = np.stack([clip.u, clip.v], axis=-1).repeat(2, axis=1).repeat(2, axis=2)
    ycbcr = np.concatenate([clip.y[..., None], chroma], axis=-1)
    rgb = tokens.to_rgb(tokens.jpeg_ycbcr(ycbcr, clip.full_range, clip.bt709)).astype(np.float32)
    lit = np.zeros((t, size // patch, size // patch), bool)
    lit[positions[:, 0], positions[:, 1], positions[:, 2]] = True
    gain = np.where(lit, 1.0, dim).repeat(patch, axis=1).repeat(patch, axis=2)[..., None]
    frames = (rgb * gain)[:, ::2, ::2].astype(np.uint8)
    rows = -(-t // cols)
    canvas = np.zeros((rows * cols, size // 2, size // 2, 3), np.uint8)
    canvas[:t] = frames
    return canvas.reshape(rows, cols, size // 2, size // 2, 3).transpose(0, 2, 1, 3, 4).reshape(rows * size // 2, -1, 3)
