"""Codec motion vectors: from the decoder's side data to a velocity field on the analysis grid.

H.264 exports one vector per block and direction (``source`` -1: from the past, +1: from the
future), quarter-pel with ``motion_scale``. FFmpeg does not say how many frames away the
reference is, so each direction's vectors are divided by a per-frame reference distance that
``reference_distance`` estimates from the pixels (1 for the P-only streams our re-encode makes).
Stock decoders of HEVC, VP9 and AV1 export nothing; :func:`reencode_vectors` re-encodes the
sampled frames to H.264 with the paper's GOP policy in memory and reads the vectors back.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
from numba import njit

CELL = 4  # vectors are rasterised on a 4x4-pixel grid of the source (the smallest H.264 partition)
SHIFT = 2  # log2(CELL)
MV_CODECS = ("h264", "mpeg4", "mpeg2video", "mpeg1video", "h263")  # decoders that honour export_mvs


@njit(cache=True, nogil=True)
def _paint(dst_x, dst_y, bw, bh, mx, my, scale, source, first_row, first_col, gain, disp, has):  # pragma: no cover
    """One frame's blocks onto its two direction planes, in block order (a later block wins a cell).

    ``first_row[y]``: the first analysis row whose source cell is >= y (clamped table lookups
    instead of binary searches); likewise ``first_col``.
    """
    last_r, last_c = len(first_row) - 1, len(first_col) - 1
    for b in range(len(dst_x)):  # shifts, not //: a signed // is a division and a sign fix-up per block
        w, h = np.int64(bw[b]), np.int64(bh[b])
        x0, y0 = (np.int64(dst_x[b]) - (w >> 1)) >> SHIFT, (np.int64(dst_y[b]) - (h >> 1)) >> SHIFT
        x1, y1 = x0 + max(w >> SHIFT, 1), y0 + max(h >> SHIFT, 1)
        # the analysis rows/columns whose sampled source cell lies inside the block
        r0, r1 = first_row[min(max(y0, 0), last_r)], first_row[min(max(y1, 0), last_r)]
        c0, c1 = first_col[min(max(x0, 0), last_c)], first_col[min(max(x1, 0), last_c)]
        if r0 == r1 or c0 == c1:
            continue  # a block between sampled cells (most small partitions of a large source)
        sign = -1.0 if source[b] < 0 else 1.0
        step = np.float32(max(scale[b], 1))
        d = 1 if source[b] > 0 else 0
        dx, dy = np.float32(sign * mx[b] / step) * gain[0], np.float32(sign * my[b] / step) * gain[1]
        for r in range(r0, r1):
            for c in range(c0, c1):
                disp[d, r, c, 0], disp[d, r, c, 1] = dx, dy
                has[d, r, c] = True


def rasterize(
    mvs: list,
    width: int,
    height: int,
    rows: np.ndarray | None = None,
    cols: np.ndarray | None = None,
    gain: tuple[float, float] = (1.0, 1.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of every frame -> per-cell displacement (T, 2 directions, R, C, 2) in source pixels x ``gain``.

    ``mvs`` holds one MOTION_VECTORS array (or None) per frame, rasterised by a compiled loop
    straight onto the analysis grid: ``rows``/``cols`` (non-decreasing) name the source 4x4 cell
    each analysis row/column samples (default: the source grid itself). The displacement is
    ``dst - src`` for past references and ``src - dst`` for future ones, so both point along the
    motion; dividing by the reference distance gives pixels per frame. ``gain`` (x, y) rescales
    it as it is painted (source -> grid pixels; float32, the bits ``disp * gain`` would give,
    without a pass over the whole array). Also returns the presence mask (T, 2, R, C).
    """
    rows = np.arange(-(-height // CELL)) if rows is None else np.asarray(rows).ravel()
    cols = np.arange(-(-width // CELL)) if cols is None else np.asarray(cols).ravel()
    disp = np.zeros((len(mvs), 2, len(rows), len(cols), 2), np.float32)
    has = np.zeros((len(mvs), 2, len(rows), len(cols)), bool)
    first_row = np.searchsorted(rows, np.arange(-(-height // CELL) + 2))
    first_col = np.searchsorted(cols, np.arange(-(-width // CELL) + 2))
    gain = np.asarray(gain, np.float32)
    for k, m in enumerate(mvs):
        if m is not None and len(m):
            fields = (m[f] for f in ("dst_x", "dst_y", "w", "h", "motion_x", "motion_y", "motion_scale", "source"))
            _paint(*fields, first_row, first_col, gain, disp[k], has[k])
    return disp, has


def grid_index(
    src_wh: tuple[int, int], content: tuple[int, int, int, int], cells: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of the source cell under each of the ``cells`` x ``cells`` analysis cells.

    Nearest-neighbour lookup; analysis cells outside the content box (pad mode) read the edge.
    """
    top, left, ch, cw = content
    centres = (np.arange(cells) + 0.5) * CELL
    gh, gw = -(-src_wh[1] // CELL), -(-src_wh[0] // CELL)
    iy = np.clip(((centres - top) * src_wh[1] / ch) // CELL, 0, gh - 1).astype(np.int64)
    ix = np.clip(((centres - left) * src_wh[0] / cw) // CELL, 0, gw - 1).astype(np.int64)
    return iy[:, None], ix[None, :]


@njit(cache=True, nogil=True)
def reference_distance(cur, ref, shift, max_distance=4):  # pragma: no cover - compiled
    """Frames between ``cur`` and its reference: the d in 1..max whose shift ``shift/d`` best predicts it.

    ``shift`` is the median displacement (x, y) of one direction (pixels at the analysis grid).
    The error is the mean |cur - shifted ref| over every second pixel far enough inside the
    frame. Only matters when the camera moves; a still background leaves the choice irrelevant,
    so 1 is returned. The samples are copied to contiguous rows first (``ref`` split by column
    parity), so the inner loop runs on adjacent bytes (3x faster than strided reads); a d whose
    rounded shift a nearer d already tried has its error, and the first of equal errors wins.
    """
    if np.hypot(shift[0], shift[1]) < 1.0:
        return 1
    m = int(np.ceil(max(abs(shift[0]), abs(shift[1]))))  # margin so every candidate shift stays inside
    h, w = cur.shape
    if 2 * m + 8 > min(h, w):
        return 1
    cols = (w - 2 * m + 1) // 2  # the samples m, m + 2, ... < w - m of a row
    sampled = np.empty((h, cols), np.uint8)
    split = np.empty((2, h, (w + 1) // 2), np.uint8)  # ref's even and odd columns
    for i in range(m, h - m, 2):
        for j in range(cols):
            sampled[i, j] = cur[i, m + 2 * j]
    for i in range(h):
        for j in range((w + 1) // 2):
            split[0, i, j] = ref[i, 2 * j]
        for j in range(w // 2):
            split[1, i, j] = ref[i, 2 * j + 1]
    best, best_d = 1 << 62, 1  # the error's sum: the count of samples is the same for every d
    tried = np.empty((max_distance, 2), np.int64)
    for d in range(1, max_distance + 1):
        sx, sy = int(np.rint(shift[0] / d)), int(np.rint(shift[1] / d))
        seen = False
        for e in range(d - 1):
            seen = seen or (tried[e, 0] == sx and tried[e, 1] == sy)
        tried[d - 1, 0], tried[d - 1, 1] = sx, sy
        if seen:
            continue
        parity, start = (m - sx) & 1, (m - sx) >> 1  # ref column m - sx + 2 j
        total = 0
        for i in range(m, h - m, 2):
            row, pred = sampled[i], split[parity, i - sy, start : start + cols]
            for j in range(cols):
                total += abs(np.int32(row[j]) - np.int32(pred[j]))
        if total < best:  # the first of equal errors wins, as argmin
            best, best_d = total, d
    return best_d


def reencode_vectors(y: np.ndarray, u: np.ndarray, v: np.ndarray, gop: int, preset: str) -> list[np.ndarray | None]:
    """Re-encode the clip's frames to H.264 in memory (GOP ``gop``, no B-frames, one reference).

    Returns each frame's vectors (None for I-frames). Frames are built fresh from the planes, so
    no source ``pict_type`` leaks into the encoder (which would copy the source's frame types).
    """
    t, h, w = y.shape
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = w, h, "yuv420p"
    enc.time_base = Fraction(1, 25)
    enc.options = {
        "preset": preset,
        "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:ref=1:threads=1",
    }
    dec = av.CodecContext.create("h264", "r")
    dec.options = {"flags2": "+export_mvs"}
    out: list[np.ndarray | None] = []

    def collect(frames):
        for frame in frames:
            sd = frame.side_data.get("MOTION_VECTORS")
            out.append(None if sd is None else sd.to_ndarray())

    for i in range(t):
        planes = np.concatenate([y[i], u[i].reshape(h // 4, w), v[i].reshape(h // 4, w)])
        frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
        frame.pict_type = av.video.frame.PictureType.NONE
        frame.pts = i
        for packet in enc.encode(frame):
            collect(dec.decode(packet))
    for packet in enc.encode(None):
        collect(dec.decode(packet))
    collect(dec.decode(None))
    return out
