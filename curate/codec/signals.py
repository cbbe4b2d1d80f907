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

CELL = 4  # vectors are rasterised on a 4x4-pixel grid of the source (the smallest H.264 partition)
MV_CODECS = ("h264", "mpeg4", "mpeg2video", "mpeg1video", "h263")  # decoders that honour export_mvs


def rasterize(
    mvs: list, width: int, height: int, rows: np.ndarray | None = None, cols: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of every frame -> per-cell displacement (T, 2 directions, R, C, 2) in source pixels.

    ``mvs`` holds one MOTION_VECTORS array (or None) per frame; all frames are rasterised in one
    vectorised pass, straight onto the analysis grid: ``rows``/``cols`` (non-decreasing) name the
    source 4x4 cell each analysis row/column samples (default: the source grid itself). The
    displacement is ``dst - src`` for past references and ``src - dst`` for future ones, so both
    point along the motion; dividing by the reference distance gives pixels per frame. Also
    returns the presence mask (T, 2, R, C).
    """
    rows = np.arange(-(-height // CELL)) if rows is None else np.asarray(rows).ravel()
    cols = np.arange(-(-width // CELL)) if cols is None else np.asarray(cols).ravel()
    nr, nc = len(rows), len(cols)
    disp = np.zeros((len(mvs), 2, nr, nc, 2), np.float32)
    has = np.zeros((len(mvs), 2, nr, nc), bool)
    parts = [(k, m) for k, m in enumerate(mvs) if m is not None and len(m)]
    if not parts:
        return disp, has
    frame = np.repeat([k for k, _ in parts], [len(m) for _, m in parts])
    mvs = np.concatenate([m for _, m in parts])
    x0 = (mvs["dst_x"] - mvs["w"] // 2).astype(np.int64) // CELL
    y0 = (mvs["dst_y"] - mvs["h"] // 2).astype(np.int64) // CELL
    # the analysis rows/columns whose sampled source cell lies inside each block
    r0, r1 = np.searchsorted(rows, y0), np.searchsorted(rows, y0 + np.maximum(mvs["h"] // CELL, 1))
    c0, c1 = np.searchsorted(cols, x0), np.searchsorted(cols, x0 + np.maximum(mvs["w"] // CELL, 1))
    nx, ny = c1 - c0, r1 - r0
    scale = np.maximum(mvs["motion_scale"], 1).astype(np.float32)
    sign = np.where(mvs["source"] < 0, -1.0, 1.0).astype(np.float32)
    dx, dy = sign * mvs["motion_x"] / scale, sign * mvs["motion_y"] / scale
    dirs = (mvs["source"] > 0).astype(np.int64)
    # expand every block into its cells, vectorised: block b covers nx[b]*ny[b] cells
    counts = nx * ny
    block = np.repeat(np.arange(len(mvs)), counts)
    local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    cy = r0[block] + local // nx[block]
    cx = c0[block] + local % nx[block]
    flat = ((frame[block] * 2 + dirs[block]) * nr + cy) * nc + cx  # one 1-D scatter, not a 5-D one
    disp.reshape(-1, 2)[flat] = np.stack([dx, dy], axis=1)[block]
    has.reshape(-1)[flat] = True
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


def reference_distance(cur: np.ndarray, ref: np.ndarray, shift: np.ndarray, max_distance: int = 4) -> int:
    """Frames between ``cur`` and its reference: the d in 1..max whose shift ``shift/d`` best predicts it.

    ``shift`` is the median displacement of one direction (pixels at the analysis grid). Only
    matters when the camera moves; a still background leaves the choice irrelevant, so 1 is returned.
    """
    if np.hypot(*shift) < 1.0:
        return 1
    m = int(np.ceil(np.abs(shift).max()))  # margin so every candidate shift stays inside the frame
    h, w = cur.shape
    if 2 * m + 8 > min(h, w):
        return 1
    target = cur[m : h - m : 2, m : w - m : 2].astype(np.int16)
    errors = []
    for d in range(1, max_distance + 1):
        sx, sy = np.round(shift / d).astype(int)
        moved = ref[m - sy : h - m - sy : 2, m - sx : w - m - sx : 2]  # ref shifted by (sx, sy), no copy
        errors.append(np.abs(target - moved).mean())
    return int(np.argmin(errors)) + 1


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
