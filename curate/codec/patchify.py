"""One clip in, codec tokens out: decode, read codec signals, score patches, select, encode.

The signal ladder, cheapest first: vectors straight from the source's decoder (H.264 and other
MPEG-family codecs); otherwise ``hevc_policy`` decides: ``reencode`` the sampled clip to H.264 in
memory and read its vectors, ``difference`` (plain frame difference, no vectors: cheap, but a
moving camera lights up the whole frame) or ``refuse``.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

import numpy as np
from numba import njit

from curate.codec.cuts import first_shot, shot_changes
from curate.codec.residual import cell_texture, half_size, mc_residual
from curate.codec.saliency import (
    camera_model,
    centre_prior,
    frame_medians,
    moving_share,
    normalise,
    patch_scores,
    percentile,
)
from curate.codec.sampling import (
    Clip,
    clip_ids,
    decode_clip,
    frame_sequence,
    inspect,
    next_keyframe,
    next_start,
    plan_clips,
    span_frames,
)
from curate.codec.selection import budget_k, top_k, uniform_frames
from curate.codec.signals import CELL, MV_CODECS, grid_index, rasterize, reencode_vectors, reference_distance
from curate.codec.tokens import MOSAIC_COLS, encode_jpeg, frames_ycbcr, gather, jpeg_ycbcr, mosaic
from curate.media import VideoError, open_video
from manifests import Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Range
from shards.format import encode_npy


@dataclasses.dataclass(frozen=True)
class PatchifyConfig:
    """Parameters of codec patchification; the ``codec_patchify`` stage's manifest keys."""

    # fraction of the T x 16 x 16 candidates kept (paper: 0.031-0.25)
    budget: Annotated[float, Range(hi=1.0, above=0.0)] = 0.125
    frames: PositiveInt = 64  # frames per clip
    stride: PositiveInt = 1  # take every stride-th frame ...
    fps: PositiveFloat | None = None  # ... or resample to this frame rate (overrides stride)
    clip: NonNegativeInt = 0  # which clip of the video (see plan_clips)
    # the next clip starts right after the previous one, inside a GOP if need be (its decoder goes on);
    # false: at the next keyframe (each clip decodable alone; frames between are not taken: with x264's
    # default GOP of 250 frames that was 3 of every 4 frames of a video)
    continuous: bool = True
    size: PositiveInt = 256  # codec grid side in pixels (256 / 16 = the ViT's 16 x 16 grid)
    patch: PositiveInt = 16
    fit: Literal["stretch", "pad"] = "stretch"  # pad keeps the aspect ratio; padding is never selected
    first_frame: Literal["score", "whole"] = "score"  # whole: frame 0 kept entirely (reference's LLaVA path)
    camera: Literal["median", "similarity", "none"] = "median"  # global motion removed (RESULTS.md: ablation)
    motion_weight: NonNegativeFloat = 1.0
    residual_weight: NonNegativeFloat = 1.0
    centre_prior: Fraction = 0.0  # 0.3 in the reference's evaluation loader
    motion_floor: PositiveFloat = 0.5  # px/frame: per-frame normalisation never divides by less
    residual_floor: PositiveFloat = 8.0  # grey levels (reference: 1); keeps a still frame's coding noise below 1
    min_texture: NonNegativeFloat = 3.0  # grey levels of mean gradient below which a cell's vector is ignored
    # a clip is static (uniform-frames fallback) when fewer than ``static_frames`` of its frames hold a
    # connected region of ``static_region`` cells (4x4 px at the grid) whose camera-compensated motion
    # exceeds ``static_motion`` px/frame and whose residual exceeds ``static_residual`` grey levels
    static_motion: NonNegativeFloat = 0.5
    static_residual: NonNegativeFloat = 3.0
    static_region: PositiveInt = 6
    static_frames: Fraction = 0.1
    hevc_policy: Literal["reencode", "difference", "refuse"] = "reencode"
    reencode_gop: PositiveInt = 16  # the paper's GOP; no B-frames, one reference
    reencode_preset: str = "superfast"
    min_frames: PositiveInt = 16  # a truncated clip is used if at least this many frames decode
    min_side: PositiveInt = 32
    keep_frames: NonNegativeInt = 4  # whole frames stored in frames.jpg
    jpeg_quality: Annotated[int, Range(1, 100)] = 90
    analysis_scale: Literal[1, 2] = 2  # residual and texture at half resolution: 4x less work, same cells
    threads: NonNegativeInt = 1  # decoder threads (0 = FFmpeg's choice); a pipeline task owns one core
    # False: the decoder skips its loop filter (deblocking): ~12 % less decoding, pixels off by under a grey
    # level on average at the grid and 1-4 % of the selection different (RESULTS.md, "Clips of a long video")
    deblock: bool = True
    split_shots: bool = True  # a clip never crosses a hard cut: split at cuts (see codec.cuts)

    def __post_init__(self):
        if self.size % self.patch or self.patch % (2 * CELL):
            raise ValueError(f"size {self.size} must be a multiple of patch {self.patch}, itself a multiple of 8")
        budget_k(self.budget, 1)
        if self.frames < 1 or self.stride < 1 or self.min_frames < 1:
            raise ValueError("frames, stride and min_frames must be positive")


@dataclasses.dataclass
class Patchified:
    """One clip's selection, with the decoded planes kept for encoding tokens and previews."""

    positions: np.ndarray  # int16 (K, 3) of (t, h, w)
    scores: np.ndarray  # float32 (T, Hp, Wp)
    clip: Clip
    facts: dict  # codec facts and saliency statistics (JSON-able)


def patchify(data: bytes | str, cfg: PatchifyConfig = PatchifyConfig()) -> Patchified:
    """Select the salient patches of one clip of ``data`` (bytes, or a local path or ``s3://`` URI,
    streamed and reopened where the clip needs it): clip ``cfg.clip``, or its first shot of
    ``min_frames`` where it crosses a hard cut."""
    with open_video(data) as container:
        source, native, stride, clips = _plan(container, cfg)
        if cfg.clip >= len(clips):
            raise VideoError(f"clip {cfg.clip} requested but the video has {len(clips)} clip(s)", "no_clip")
        clip = decode_clip(
            data, source, clips[cfg.clip], cfg.size, cfg.fit, native, cfg.threads, container, deblock=cfg.deblock
        )
    changes = shot_changes(clip.y) if cfg.split_shots else np.zeros(0, np.int64)
    cut_ids = clip.frame_ids[changes].tolist()
    if len(changes):  # a clip never straddles a hard cut: keep one shot of it
        clip = _shot(clip, *first_shot(changes, len(clip.frame_ids), cfg.min_frames))
        if len(clip.frame_ids) < cfg.min_frames:
            raise VideoError(
                f"no shot of {cfg.min_frames} frames in the clip (hard cuts at frames {cut_ids}; "
                f"the longest shot has {len(clip.frame_ids)}); lower min_frames to take short shots",
                "too_short",
            )
    return _select(clip, source, cfg, native, stride, cut_ids)


def patchify_all(
    data: bytes | str, cfg: PatchifyConfig = PatchifyConfig(), max_clips: int = 0, not_taken=None, span=None
):
    """Every clip of ``data``: yields ``(clip number, Patchified or VideoError)``, each within one shot
    of at least ``min_frames`` frames (a clip never straddles a hard cut), at most ``max_clips`` (0: all),
    one at a time (a long video never holds more than one decoded clip). Each clip follows the one
    before (``cfg.continuous``; else it starts on the next keyframe); where a shot begins inside a clip,
    the next clip starts there (with ``continuous`` false: where the cut is on a keyframe, as encoders
    put one), so the shot is taken whole. ``not_taken`` (a dict) counts the clips left out and why:
    ``short_shot`` (a shot under ``min_frames`` between cuts), ``short_tail`` (the video's last
    frames), ``max_clips``. ``span`` ``(start, end)`` in seconds (end None: to the end) restricts the
    video to the frames shown in ``[start, end)``: a clip table's row; its first clip starts at the
    span's first frame (decoding from the keyframe before it) and no clip reaches past its end.
    """
    not_taken = {} if not_taken is None else not_taken
    not_taken.update(short_shot=0, short_tail=0, max_clips=0)
    taken, carry = 0, None
    with open_video(data) as container:
        source, native, stride, _ = _plan(container, cfg)
        sequence = frame_sequence(source, stride, cfg.fps)
        start, stop = span_frames(source, *span) if span else (0, source.frame_count)
        while start is not None:
            ids = clip_ids(source, start, cfg.frames, stride, sequence)
            ids = ids[ids < stop]
            if not len(ids):
                break
            resume = next_start(source, ids, stride, sequence, cfg.continuous)
            resume = resume if resume is not None and resume < stop else None
            if max_clips and taken >= max_clips:  # the rest are not decoded at all
                not_taken["max_clips"] += 1
                start = resume
                continue
            try:
                clip = decode_clip(
                    data, source, ids, cfg.size, cfg.fit, native, cfg.threads, container, carry, cfg.deblock
                )
            except VideoError as exc:
                taken, carry = taken + 1, None
                yield taken - 1, exc
                start = resume
                continue
            changes = shot_changes(clip.y) if cfg.split_shots else np.zeros(0, np.int64)
            cut_ids = clip.frame_ids[changes].tolist()
            bounds = [0, *changes.tolist(), len(clip.frame_ids)]
            restart = (cut_ids[-1] if cfg.continuous else next_keyframe(source, cut_ids[-1])) if cut_ids else None
            n = len(clip.frame_ids)
            if restart is not None and restart <= ids[-1]:  # the last shot goes on: take it whole next time
                bounds, resume = bounds[:-1], restart
                carry = _shot(clip, int(np.searchsorted(clip.frame_ids, restart)), n)
            elif cfg.continuous and not clip.truncated:  # the next clip goes on from this one's last frame
                tail = _shot(clip, n - 1, n)  # copied, so that one decoded clip is held at a time
                carry = dataclasses.replace(tail, y=tail.y.copy(), u=tail.u.copy(), v=tail.v.copy())
            else:
                carry = None
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
                if hi - lo < cfg.min_frames and not clip.truncated:
                    not_taken["short_tail" if resume is None and hi == len(clip.frame_ids) else "short_shot"] += 1
                elif max_clips and taken >= max_clips:
                    not_taken["max_clips"] += 1
                else:
                    taken += 1
                    part = _shot(clip, lo, hi) if (lo, hi) != (0, len(clip.frame_ids)) else clip
                    try:
                        yield taken - 1, _select(part, source, cfg, native, stride, cut_ids)
                    except VideoError as exc:
                        yield taken - 1, exc
            start = resume


def _plan(container, cfg: PatchifyConfig):
    """(source facts, whether the decoder gives motion vectors, stride, planned clips)."""
    source = inspect(container, cfg.min_side)
    stride = max(1, round(source.fps / cfg.fps)) if cfg.fps and source.fps else cfg.stride
    clips = plan_clips(source, cfg.frames, stride, cfg.fps, cfg.continuous)
    native = source.codec in MV_CODECS
    if not native and cfg.hevc_policy == "refuse":
        raise VideoError(f"codec {source.codec} exports no motion vectors and hevc_policy is 'refuse'", "codec_refused")
    return source, native, stride, clips


def _select(clip: Clip, source, cfg: PatchifyConfig, native: bool, stride: int, cut_ids: list) -> Patchified:
    """Saliency and the budget's patches of one decoded clip (within one shot)."""
    if len(clip.frame_ids) < cfg.min_frames and clip.truncated:
        raise VideoError(
            f"only {len(clip.frame_ids)} frame(s) decoded (min_frames {cfg.min_frames}); truncated or corrupt",
            "truncated",
        )
    if len(clip.frame_ids) < cfg.min_frames:
        raise VideoError(
            f"the clip has {len(clip.frame_ids)} frame(s), fewer than min_frames {cfg.min_frames}", "too_short"
        )

    path = "codec_mvs"
    velocity, has, distances = _vectors(clip, source.width, source.height, cfg.size) if native else (None, None, [])
    if native and not has.any() and len(clip.frame_ids) > 1:
        native = False  # an all-intra stream: fall back as if the codec exported nothing
    if not native:
        if cfg.hevc_policy == "reencode":
            path = "reencode_h264"
            mvs = reencode_vectors(clip.y, clip.u, clip.v, cfg.reencode_gop, cfg.reencode_preset)
            clip.vectors, full = mvs, (clip.y.shape[2], clip.y.shape[1])
            velocity, has, distances = _vectors(clip, *full, cfg.size, (0, 0, cfg.size, cfg.size), b_frames=False)
        else:
            path = "frame_difference"
            cells = cfg.size // CELL
            velocity = np.zeros((len(clip.frame_ids), cells, cells, 2), np.float32)
            has = np.zeros(velocity.shape[:3], bool)

    # pixel statistics run at 1/analysis_scale resolution: a 4x4 cell becomes (4/scale)^2 pixels
    y, prev_y, cell = clip.y, clip.prev_y, CELL // cfg.analysis_scale
    if cfg.analysis_scale == 2:
        y, prev_y = half_size(y), half_size(prev_y)
    has = has & (cell_texture(y, cell) * cfg.analysis_scale >= cfg.min_texture)  # flat: vectors say nothing
    model = camera_model(velocity, has, cfg.camera)
    # residual: the better of two predictions, the block's own vector or the camera's motion;
    # the second covers blocks whose vector or reference frame we cannot know (B-frames, multi-ref)
    own, camera, motion = _fields(velocity, has, model, np.float32(cfg.analysis_scale))
    res = mc_residual(y, prev_y, own, camera, cell=cell)
    e_motion = normalise(motion, cfg.motion_floor)
    e_res = normalise(res, cfg.residual_floor)
    fused = (cfg.motion_weight * e_motion + cfg.residual_weight * e_res) / (cfg.motion_weight + cfg.residual_weight)
    if cfg.centre_prior:
        fused = fused * centre_prior(fused.shape[1], cfg.centre_prior)
    if not clip.has_prev[0] and len(fused) > 1:
        fused[0] = fused[1]  # no predecessor: the neighbour's map is the best estimate of frame 0
    scores = patch_scores(fused, cfg.patch // CELL).astype(np.float32)

    grid = cfg.size // cfg.patch
    top, left, ch, cw = clip.content
    edges = np.arange(grid) * cfg.patch
    valid = None
    if cfg.fit == "pad":
        rows = (edges >= top) & (edges + cfg.patch <= top + ch)
        cols = (edges >= left) & (edges + cfg.patch <= left + cw)
        valid = rows[:, None] & cols[None, :]
    candidates = len(scores) * (int(valid.sum()) if valid is not None else grid * grid)
    k = budget_k(cfg.budget, candidates)
    motion_p95 = float(percentile(motion[has][None], 95)[0]) if has.any() else 0.0
    res_p95 = float(percentile(res[clip.has_prev].reshape(1, -1), 95)[0]) if clip.has_prev.any() else 0.0
    moving = moving_share(motion, has, res, cfg.static_motion, cfg.static_residual, cfg.static_region)
    static = moving < cfg.static_frames
    if static:
        positions = uniform_frames(scores, k, valid)
    else:
        positions = top_k(scores, k, valid, cfg.first_frame)

    kept = scores[positions[:, 0], positions[:, 1], positions[:, 2]]
    facts = {
        "codec": source.codec,
        "colour": ("full" if clip.full_range else "limited") + ("/bt709" if clip.bt709 else "/bt601"),
        "gop": source.gop,
        "fps": source.fps,
        "width": source.width,
        "height": source.height,
        "pixel_aspect": round(source.pixel_aspect, 4),
        "rotation": 90 * clip.turns,
        "stride": stride,
        "sampling": "index" if cfg.fps is None and source.regular else "time",
        "frame_ids": clip.frame_ids.tolist(),
        "start_time": _seconds(source, clip.frame_ids[0]),
        "end_time": _seconds(source, clip.frame_ids[-1]),
        "pict_types": "".join(p[0] for p in clip.pict_types),
        "signal": path,
        "reference_distances": distances,
        "truncated": clip.truncated,
        "cuts": cut_ids,
        "grid": [len(scores), grid, grid],
        "patch": cfg.patch,
        "size": cfg.size,
        "fit": cfg.fit,
        "content": list(clip.content),
        "budget": cfg.budget,
        "k": int(len(positions)),
        "first_frame": cfg.first_frame,
        "selection": "static_fallback" if static else "top_k",
        "saliency": {
            "motion_p95_px": round(motion_p95, 4),
            "moving_frames": round(moving, 4),
            "residual_p95": round(res_p95, 4),
            "score_p50": round(float(percentile(scores.reshape(1, -1), 50)[0]), 4),
            "score_p95": round(float(percentile(scores.reshape(1, -1), 95)[0]), 4),
            "kept_share": round(float(kept.sum() / max(scores.sum(), 1e-9)), 4),
            "vector_cells": round(float(has.mean()), 4),
        },
    }
    return Patchified(positions, scores, clip, facts)


def _seconds(source, frame: int) -> float:
    """Presentation time of display frame ``frame`` from the first frame, in seconds."""
    base = source.time_base or (1 / source.fps if source.fps else 0.0)
    return round(float(source.pts[frame] - source.pts[0]) * base, 4)


def _shot(clip: Clip, start: int, stop: int) -> Clip:
    """Frames [start, stop) of a decoded clip; its first frame has no predecessor in the shot."""
    part = slice(start, stop)
    has_prev, prev_y = clip.has_prev[part].copy(), clip.prev_y[part].copy()
    has_prev[0], prev_y[0] = False, clip.y[start]
    return dataclasses.replace(
        clip,
        y=clip.y[part],
        u=clip.u[part],
        v=clip.v[part],
        prev_y=prev_y,
        has_prev=has_prev,
        vectors=clip.vectors[part],
        pict_types=clip.pict_types[part],
        frame_ids=clip.frame_ids[part],
    )


@njit(cache=True, nogil=True)
def _combine(disp, present, dist):  # pragma: no cover - compiled
    """Velocity (px/frame): the mean over directions with a vector of displacement / reference distance."""
    t, dirs, rows, cols, _ = disp.shape
    velocity = np.zeros((t, rows, cols, 2), np.float32)
    has = np.zeros((t, rows, cols), np.bool_)
    for k in range(t):
        for r in range(rows):
            for c in range(cols):
                count = 0
                vx, vy = np.float32(0), np.float32(0)
                for d in range(dirs):
                    if present[k, d, r, c]:
                        vx += disp[k, d, r, c, 0] / dist[k, d]
                        vy += disp[k, d, r, c, 1] / dist[k, d]
                        count += 1
                if count:  # float32 division: the float64 one rounded to float32 gives the same bits, slower
                    n = np.float32(count)
                    velocity[k, r, c, 0], velocity[k, r, c, 1] = vx / n, vy / n
                    has[k, r, c] = True
    return velocity, has


@njit(cache=True, nogil=True)
def _fields(velocity, has, model, scale):  # pragma: no cover - compiled
    """Own and camera fields at the analysis scale, and the motion the camera does not explain.

    = ``where(has, velocity, 0) / scale``, ``model / scale`` and ``where(has, |velocity - model|, 0)``
    (px/frame), float32 throughout: in NumPy, five temporaries of the field (5 ms a clip).
    """
    t, rows, cols, _ = velocity.shape
    own, camera = np.empty_like(velocity), np.empty_like(model)
    motion = np.zeros((t, rows, cols), np.float32)
    for k in range(t):
        for r in range(rows):
            for c in range(cols):
                for a in range(2):
                    own[k, r, c, a] = (velocity[k, r, c, a] if has[k, r, c] else np.float32(0)) / scale
                    camera[k, r, c, a] = model[k, r, c, a] / scale
                if has[k, r, c]:
                    dx, dy = velocity[k, r, c, 0] - model[k, r, c, 0], velocity[k, r, c, 1] - model[k, r, c, 1]
                    motion[k, r, c] = np.sqrt(dx * dx + dy * dy)
    return own, camera, motion


def _vectors(clip: Clip, src_w: int, src_h: int, size: int, content=None, b_frames: bool = True):
    """Per-frame velocity (T, cells, cells, 2) in px/frame at the grid, presence mask, ref distances.

    ``b_frames=False`` (our P-only re-encode) takes every reference to be the previous frame.
    """
    content = content or clip.content
    cells = size // CELL
    iy, ix = grid_index((src_w, src_h), content, cells)
    gain = np.array([content[3] / src_w, content[2] / src_h], np.float32)
    n = len(clip.frame_ids)
    disp, present = rasterize(clip.vectors, src_w, src_h, iy, ix, gain)  # (T, 2, cells, cells[, 2]), grid px
    dist = np.ones((n, 2), np.float32)
    if b_frames and "B" in clip.pict_types:  # B-frame streams: references may be several frames away
        t, dirs, rows, cols, _ = disp.shape  # median displacement of each frame and direction
        shifts = frame_medians(disp.reshape(t * dirs, rows * cols, 2), present.reshape(t * dirs, -1))
        shifts = shifts.reshape(t, dirs, 2)
        for k, d in zip(*np.nonzero(present.any(axis=(2, 3))), strict=True):
            if d == 0 and clip.has_prev[k]:
                dist[k, d] = reference_distance(clip.y[k], clip.prev_y[k], shifts[k, d])
            elif d == 1 and k + 1 < n and clip.frame_ids[k + 1] == clip.frame_ids[k] + 1:
                dist[k, d] = reference_distance(clip.y[k + 1], clip.y[k], shifts[k, d])
    velocity, has = _combine(disp, present, dist)
    for k in range(1, n):  # an I-frame inside the clip: motion is smooth, borrow the previous field
        if not has[k].any() and clip.has_prev[k]:
            velocity[k], has[k] = velocity[k - 1], has[k - 1]
    return velocity, has, sorted(set(dist[present.any(axis=(2, 3))].astype(int).tolist()))


def encode(result: Patchified, cfg: PatchifyConfig = PatchifyConfig()) -> dict:
    """Shard fields of one clip: ``patches_jpg``, ``pos_npy``, ``frames_jpg`` bytes and the json facts."""
    clip = result.clip
    patches = jpeg_ycbcr(gather(clip.y, clip.u, clip.v, result.positions, cfg.patch), clip.full_range, clip.bt709)
    n = max(1, min(cfg.keep_frames, len(clip.frame_ids)))
    ids = np.unique(np.linspace(0, len(clip.frame_ids) - 1, n).round().astype(int))
    meta = dict(result.facts, mosaic_cols=MOSAIC_COLS)
    out = {
        "patches_jpg": encode_jpeg(mosaic(patches), cfg.jpeg_quality),
        "pos_npy": encode_npy(result.positions.astype(np.int16)),
        "frames_jpg": encode_jpeg(
            jpeg_ycbcr(frames_ycbcr(clip.y, clip.u, clip.v, ids), clip.full_range, clip.bt709),
            cfg.jpeg_quality,
        ),
        "codec": meta,
        "frames": {"ids": ids.tolist(), "source_ids": clip.frame_ids[ids].tolist()},
    }
    return out
