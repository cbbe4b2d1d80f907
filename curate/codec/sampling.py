"""Clip sampling: find GOP boundaries by demuxing, then decode one clip at the codec grid.

A clip is decoded from the keyframe at or before its first frame, or goes on from the decoder of the
clip just before it (clips follow each other, inside a GOP where need be). Frames are scaled
once by swscale to 8-bit 4:2:0 at the target grid (not at all when the source already is that):
any pixel format FFmpeg decodes (10-bit, 4:2:2, 4:4:4, RGB, grey) is converted on the way.
the Y plane feeds the residual, and Y/U/V are what a 4:2:0 JPEG stores, so only the kept
patches' samples are remapped to JPEG range (``tokens.jpeg_ycbcr``), never whole frames to RGB.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from curate.media import VideoError, open_video, pixel_aspect

NATIVE_PIX_FMTS = ("yuv420p", "yuvj420p")  # read as decoded; everything else through swscale


@dataclasses.dataclass
class Source:
    """Stream facts from the container and one demux pass (no decoding)."""

    codec: str
    width: int
    height: int
    fps: float
    pix_fmt: str
    pts: np.ndarray  # display-ordered presentation timestamps, one per frame
    keyframes: np.ndarray  # display indices of keyframes (GOP starts)
    time_base: float = 0.0  # seconds per pts unit
    regular: bool = True  # constant frame rate and no missing frames: frames can be taken by index
    pixel_aspect: float = 1.0  # a pixel's displayed width over its height (anamorphic SD, DVD: 32/27 ...)

    @property
    def frame_count(self) -> int:
        return len(self.pts)

    @property
    def gop(self) -> int | None:
        """Median keyframe interval, or None for a single-GOP stream."""
        return int(np.median(np.diff(self.keyframes))) if len(self.keyframes) > 1 else None


@dataclasses.dataclass
class Clip:
    """Decoded clip at the target grid, samples as coded: Y (T,H,W), U and V (T,H/2,W/2), uint8."""

    y: np.ndarray
    u: np.ndarray
    v: np.ndarray
    prev_y: np.ndarray  # (T,H,W) the decoded frame just before each sampled frame (itself if none)
    has_prev: np.ndarray  # (T,) bool
    vectors: list  # per sampled frame: MOTION_VECTORS structured array or None
    pict_types: list[str]
    frame_ids: np.ndarray  # display indices in the source
    content: tuple[int, int, int, int]  # (top, left, height, width) of real pixels (pad mode)
    truncated: bool
    full_range: bool  # JPEG-range samples (else 16-235 video range)
    bt709: bool  # BT.709 matrix (else BT.601)
    turns: int = 0  # counter-clockwise quarter turns applied from rotation metadata
    decoder: Iterator | None = None  # the container's frames, just past this clip's last: the next clip goes on


def inspect(container, min_side: int) -> Source:
    """Check the stream is one we can patchify and index its frames and keyframes by demuxing.

    Packets an edit list hides (a cut made by stream copy starts at the keyframe before the cut; the
    container marks the frames before it discarded, and the decoder never outputs them) are not frames.
    """
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise VideoError(f"no video stream (streams: {', '.join(kinds)}); audio-only or not a video", "no_video_stream")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    pix_fmt = ctx.format.name if ctx.format else "unknown"
    w, h = ctx.width, ctx.height
    if min(w, h) < min_side:
        raise VideoError(f"frame size {w}x{h} refused: need sides of at least {min_side} px", "too_small")
    pts, keys, untimed = [], [], 0
    try:
        for packet in container.demux(stream):
            if packet.size and packet.pts is None:
                untimed += 1
            elif packet.size and not packet.is_discard:
                pts.append(packet.pts)
                keys.append(packet.is_keyframe)
    except av.FFmpegError:
        pass  # truncated tail: index what demuxed
    if untimed and not pts:
        raise VideoError(
            "video packets carry no timestamps (raw elementary stream?); remux into mp4/mkv first", "no_timestamps"
        )
    if not pts:
        raise VideoError("video stream holds zero frames", "no_frames")
    order = np.argsort(pts, kind="stable")
    pts_sorted = np.asarray(pts, dtype=np.int64)[order]
    keyframes = np.flatnonzero(np.asarray(keys)[order])
    if len(keyframes) == 0 or keyframes[0] != 0:
        keyframes = np.concatenate([[0], keyframes]).astype(np.int64)
    steps = np.diff(pts_sorted)
    regular = True
    if len(steps) > 2:  # variable rate (phones) or sparse (skipped frames): sampled by time, not index
        med = np.median(steps)
        multiple = steps / med if med > 0 else steps
        regular = bool(med > 0 and np.mean(np.abs(multiple - np.rint(multiple)) > 0.1) <= 0.05)
        regular = regular and not (np.rint(multiple) >= 2).any()
    fps = float(stream.average_rate or stream.guessed_rate or 0)
    time_base = float(stream.time_base) if stream.time_base else 0.0
    return Source(ctx.name, w, h, fps, pix_fmt, pts_sorted, keyframes, time_base, regular, pixel_aspect(stream))


def plan_clips(
    source: Source, frames: int, stride: int, fps: float | None = None, continuous: bool = True
) -> list[np.ndarray]:
    """Split the video into clips of up to ``frames`` display indices, the first starting at frame 0.

    Regular sources without a target ``fps`` take every ``stride``-th frame by index. Otherwise
    frames are taken by presentation time on a grid of ``1 / fps`` seconds (``stride`` source frame
    intervals without ``fps``), the nearest frame to each grid time, never the same frame twice: a
    variable-rate phone recording gets evenly timed frames and a file with skipped frames gets the
    frames it has. The next clip starts right after the previous one (``continuous``: its decoder goes
    on, so a clip may start inside a GOP; a clip reached by a seek decodes from the keyframe before
    it), or at the first keyframe after it (every clip decodable alone from its own keyframe; the
    frames between are not taken). A tail shorter than one clip becomes a short final clip.
    """
    sequence = frame_sequence(source, stride, fps)
    clips, start = [], 0
    while start is not None:
        ids = clip_ids(source, start, frames, stride, sequence)
        if not len(ids):
            break
        clips.append(ids)
        start = next_start(source, ids, stride, sequence, continuous)
    return clips


def next_start(source: Source, ids: np.ndarray, stride: int, sequence, continuous: bool) -> int | None:
    """Where the clip after ``ids`` starts (see :func:`plan_clips`), or None at the end of the video."""
    if not continuous:
        return next_keyframe(source, ids[-1] + 1)
    if sequence is None:
        return int(ids[-1]) + stride if ids[-1] + stride < source.frame_count else None
    later = sequence[sequence > ids[-1]]
    return int(later[0]) if len(later) else None


def frame_sequence(source: Source, stride: int, fps: float | None) -> np.ndarray | None:
    """The frames taken by time (see :func:`plan_clips`), or None where every ``stride``-th is taken."""
    if fps is None and source.regular:
        return None
    return _time_grid(source, 1 / fps if fps else stride / _rate(source))


def clip_ids(source: Source, start: int, frames: int, stride: int, sequence: np.ndarray | None) -> np.ndarray:
    """Display indices of the clip that starts at frame ``start``."""
    if sequence is None:
        return np.arange(start, min(source.frame_count, start + frames * stride), stride)
    return sequence[sequence >= start][:frames]


def span_frames(source: Source, start: float, end: float | None) -> tuple[int, int]:
    """Display indices ``[first, stop)`` of the frames shown in ``[start, end)`` seconds (times from
    the first frame, as clip tables give them; ``end`` None: to the end of the video)."""
    t = (source.pts - source.pts[0]) * (source.time_base or 1 / _rate(source))
    first = int(np.searchsorted(t, start - 1e-6))
    stop = len(t) if end is None else int(np.searchsorted(t, end - 1e-6))
    if first >= stop:
        raise VideoError(
            f"the clip [{start:g}, {end if end is None else f'{end:g}'}) s holds no frame of a {t[-1]:.3f} s video"
        )
    return first, stop


def next_keyframe(source: Source, at_or_after: int) -> int | None:
    later = source.keyframes[source.keyframes >= at_or_after]
    return int(later[0]) if len(later) else None


def _rate(source: Source) -> float:
    """Frames per second: the container's, else the median timestamp step's."""
    if source.fps:
        return source.fps
    steps = np.diff(source.pts)
    return 1 / (float(np.median(steps)) * source.time_base) if len(steps) and source.time_base else 24.0


def _time_grid(source: Source, step: float) -> np.ndarray:
    """Display indices of the frames nearest to ``0, step, 2 step, ...`` seconds, repeats dropped."""
    t = (source.pts - source.pts[0]) * (source.time_base or 1 / _rate(source))
    if len(t) == 1:
        return np.zeros(1, np.int64)
    grid = np.arange(0.0, t[-1] + step / 2, step)
    after = np.clip(np.searchsorted(t, grid), 1, len(t) - 1)
    nearest = np.where(grid - t[after - 1] <= t[after] - grid, after - 1, after)
    return np.unique(nearest)


def decode_clip(
    data: bytes | str,
    source: Source,
    ids: np.ndarray,
    size: int,
    fit: str,
    want_vectors: bool,
    threads: int = 1,
    container=None,
    carry: Clip | None = None,
    deblock: bool = True,
) -> Clip:
    """Decode the frames ``ids`` (plus their predecessors) scaled to the ``size`` square grid.

    ``fit="stretch"`` scales to the square; ``fit="pad"`` keeps the aspect ratio and centres the
    picture on a black canvas (``content`` says where). Decoding stops at the first corrupt packet.
    ``carry``, frames of the clip decoded just before: either the first of ``ids`` (a shot a cut cut
    off that clip; its first frame has no predecessor), taken as they are, or frames before ``ids`` (the
    clip just before); decoding goes on from its ``decoder``, so nothing is decoded twice and a clip
    may start inside a GOP without a seek.
    An open ``container`` (e.g. the one :func:`inspect` demuxed) is sought back to the clip's
    keyframe; where that fails or lands past it (MPEG-TS estimates byte offsets) the clip is
    decoded from the start of a freshly opened stream instead: ``data`` is what opens it again
    (bytes, or a local path or ``s3://`` URI, streamed; see ``curate.media.open_video``).
    ``deblock=False`` has the decoder skip its loop filter: less decoding work, slightly blockier
    pixels that drift along a GOP (measured in RESULTS.md, "Clips of a long video").
    """
    opts = (threads, deblock)
    if container is not None and carry is not None and carry.decoder is not None:
        m = len(carry.frame_ids)
        leads = not carry.has_prev[0] and m <= len(ids) and np.array_equal(carry.frame_ids, ids[:m])
        if leads and m == len(ids):
            return carry
        if leads or carry.frame_ids[-1] < ids[0]:  # its first frames, or the clip just before
            try:
                clip = _decode(container, source, ids, size, fit, want_vectors, opts, seek=False, prefix=carry)
            except av.FFmpegError:
                clip = None
            if clip is not None and len(clip.frame_ids) == len(ids):
                return clip
    if container is not None:
        try:
            clip = _decode(container, source, ids, size, fit, want_vectors, opts, seek=True)
        except av.FFmpegError:
            clip = None
        if clip is not None and len(clip.frame_ids) == len(ids):
            return clip  # else the seek landed wrong (MPEG-TS near its end) or a packet broke: try from the start
    with open_video(data) as fresh:
        return dataclasses.replace(_decode(fresh, source, ids, size, fit, want_vectors, opts, seek=False), decoder=None)


def _decode(container, source, ids, size, fit, want_vectors, opts, seek, prefix=None) -> Clip | None:
    stream = container.streams.video[0]
    if not stream.codec_context.is_open:  # a later clip of the same container reuses the open decoder
        threads, deblock = opts
        stream.thread_count = threads
        if threads != 1:
            stream.thread_type = "AUTO"
        options = {"flags2": "+export_mvs"} if want_vectors else {}
        stream.codec_context.options = options if deblock else dict(options, skip_loop_filter="all")
    n, m = len(ids), 0 if prefix is None or prefix.frame_ids[0] != ids[0] else len(prefix.frame_ids)
    y = np.zeros((n, size, size), np.uint8)
    u = np.full((n, size // 2, size // 2), 128, np.uint8)
    v = u.copy()
    prev_y = np.zeros_like(y)
    has_prev = np.zeros(n, bool)
    got = np.zeros(n, bool)
    vectors: list = [None] * n
    kinds = ["?"] * n
    truncated = full_range = bt709 = False
    turns = None  # quarter turns to display orientation, from the first frame's rotation metadata
    last_y = None
    if prefix is not None:  # frames already decoded; the decoder goes on just past the last of them
        y[:m], u[:m], v[:m], prev_y[:m], got[:m] = prefix.y[:m], prefix.u[:m], prefix.v[:m], prefix.prev_y[:m], True
        has_prev[:m] = prefix.has_prev[:m]
        vectors[:m], kinds[:m] = prefix.vectors[:m], prefix.pict_types[:m]
        full_range, bt709, turns = prefix.full_range, prefix.bt709, prefix.turns
        top, left, ch, cw = prefix.content
        if m or (prefix.frame_ids[-1] == ids[0] - 1 and ids[0] not in source.keyframes):
            last_y = prefix.y[-1] if m == 0 else y[m - 1]  # the clip before ends just before this one
        frames = prefix.decoder
    else:
        first = int(source.pts[source.keyframes[source.keyframes <= ids[0]][-1]])
        if seek:
            container.seek(first, stream=stream, backward=True, any_frame=False)
        frames = container.decode(stream)
    wanted = {int(source.pts[i]): k for k, i in enumerate(ids) if k >= m}
    taken = set(ids.tolist())
    before = {int(source.pts[i - 1]): k for k, i in enumerate(ids) if k >= m and i > 0 and i - 1 not in taken}
    if m == 0 and 0 < ids[0] and ids[0] in source.keyframes:  # no predecessor on a keyframe, as after a seek
        before.pop(int(source.pts[ids[0] - 1]), None)
    last_pts = int(source.pts[ids[-1]])
    try:
        for frame in frames:
            if seek and frame.pts is not None and frame.pts > first and not got.any() and last_y is None:
                return None  # landed after the clip's keyframe
            seek = False
            if frame.pts is None or (prefix is None and frame.pts < first):
                continue
            if turns is None:
                turns = _quarter_turns(frame)
                top, left, ch, cw = _content(source, size, fit, turns)
            k, kp = wanted.get(frame.pts), before.get(frame.pts)
            if k is not None or kp is not None:
                fy, fu, fv, full, is_709, scaled = _display_planes(frame, cw, ch, turns)
                if k is not None:
                    y[k, top : top + ch, left : left + cw] = fy
                    u[k, top // 2 : (top + ch) // 2, left // 2 : (left + cw) // 2] = fu
                    v[k, top // 2 : (top + ch) // 2, left // 2 : (left + cw) // 2] = fv
                    got[k] = True
                    kinds[k] = av.video.frame.PictureType(frame.pict_type).name
                    full_range, bt709 = full, is_709
                    if want_vectors and not turns:  # a rotated picture's vectors are in coded orientation
                        # from the scaled copy (it shares the side data): reading a frame's side data ties
                        # the frame in a reference cycle, and a decoder frame kept so stops the decoder
                        # reusing its buffers (a 720p clip: 600 MB held, 5 % more decode time)
                        sd = scaled.side_data.get("MOTION_VECTORS")
                        vectors[k] = None if sd is None else _in_stream_pixels(sd.to_ndarray(), frame, source)
                    if last_y is not None:
                        prev_y[k] = last_y
                        has_prev[k] = True
                    if k + 1 < n:
                        last_y = y[k]
                if kp is not None:
                    last_y = np.zeros((size, size), np.uint8)
                    last_y[top : top + ch, left : left + cw] = fy
            if frame.pts >= last_pts:
                break
    except av.FFmpegError:  # corrupt or cut stream: keep what decoded
        truncated, frames = True, None
    if turns is None:  # nothing decoded
        top, left, ch, cw = _content(source, size, fit, 0)
    # only the decoded prefix is usable: a gap would break the clip's frame-to-frame signals
    stop = n if got.all() else int(np.argmin(got))
    truncated = truncated or stop < n
    prev_y[~has_prev] = y[~has_prev]
    return Clip(  # views of the decoded prefix, not copies (10 MB of planes for a 64-frame clip)
        y[:stop],
        u[:stop],
        v[:stop],
        prev_y[:stop],
        has_prev[:stop],
        vectors[:stop],
        kinds[:stop],
        ids[:stop],
        (top, left, ch, cw),
        truncated,
        full_range,
        bt709,
        turns or 0,
        None if truncated else frames,
    )


def _in_stream_pixels(mvs: np.ndarray, frame, source: Source) -> np.ndarray:
    """A frame's vectors in the stream's first frame size: a stream may change resolution midway (broadcast
    captures, adaptive streams), and the grid maps the first size."""
    gain_x, gain_y = source.width / frame.width, source.height / frame.height
    if gain_x == gain_y == 1:
        return mvs
    mvs = mvs.copy()
    for fields, gain in ((("src_x", "dst_x", "w", "motion_x"), gain_x), (("src_y", "dst_y", "h", "motion_y"), gain_y)):
        for name in fields:
            mvs[name] = np.rint(mvs[name] * gain)
    return mvs


def _quarter_turns(frame) -> int:
    """Counter-clockwise quarter turns that rotation metadata asks for (phones record upright video so)."""
    degrees = int(round(getattr(frame, "rotation", 0) or 0)) % 360
    if degrees % 90:
        raise VideoError(f"rotation metadata of {degrees} deg is not a quarter turn", "rotation")
    return degrees // 90


def _content(source: Source, size: int, fit: str, turns: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the picture on the ``size`` grid, in display orientation and shape."""
    shown = source.width * source.pixel_aspect  # pad keeps the shape as displayed, not as stored
    width, height = (source.height, shown) if turns % 2 else (shown, source.height)
    if fit == "pad":
        scale = min(size / width, size / height)
        cw, ch = max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)
    else:
        cw, ch = size, size
    return (size - ch) // 2, (size - cw) // 2, ch, cw


def _display_planes(frame, cw: int, ch: int, turns: int) -> tuple:
    """Y, U, V at ``cw`` x ``ch`` in display orientation, (full range, BT.709) of their samples, and the
    scaled frame they view (``frame`` itself where it already is at the grid)."""
    w, h = (ch, cw) if turns % 2 else (cw, ch)  # scaled in coded orientation, then turned
    scaled, full, bt709 = _to_grid(frame, w, h)
    planes = [
        _plane(p, r)[:, :c] for p, r, c in zip(scaled.planes, (h, h // 2, h // 2), (w, w // 2, w // 2), strict=True)
    ]
    if turns:
        planes = [np.rot90(p, turns) for p in planes]
    return (*planes, full, bt709, scaled)


_REFORMATTER = VideoReformatter()  # keeps its swscale context between frames of one size and format


def _to_grid(frame, width: int, height: int) -> tuple:
    """The frame as 8-bit 4:2:0 at ``width`` x ``height``, and whether its samples are (full range, BT.709).

    YUV sources keep their range and matrix (swscale is told the range on both sides, so it does not
    convert it; JPEG-range ``yuvj*`` stays ``yuvj420p``). RGB, grey and palette sources become
    full-range BT.601, JPEG's own convention, so the tokens need no remapping.
    """
    name = frame.format.name
    if not name.startswith("yuv"):
        out = _REFORMATTER.reformat(
            frame,
            width,
            height,
            "yuvj420p",
            dst_colorspace="ITU601",
            interpolation="AREA",
            src_color_range="JPEG",
            dst_color_range="JPEG",
            threads=1,
        )
        return out, True, False
    full, bt709 = frame.color_range == 2 or name.startswith("yuvj"), frame.colorspace == 1
    target = "yuvj420p" if name.startswith("yuvj") else "yuv420p"
    if (frame.width, frame.height) == (width, height) and name == target:
        return frame, full, bt709
    side = "JPEG" if full else "MPEG"
    out = _REFORMATTER.reformat(
        frame, width, height, target, interpolation="AREA", src_color_range=side, dst_color_range=side, threads=1
    )
    return out, full, bt709


def _plane(plane, rows: int) -> np.ndarray:
    """A plane's samples without a copy; rows are ``line_size`` long (the caller crops the padding)."""
    return np.frombuffer(plane, np.uint8, count=rows * plane.line_size).reshape(rows, plane.line_size)
