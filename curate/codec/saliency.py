"""Per-patch saliency: camera-motion-compensated vectors plus residual, normalised per frame.

Follows the reference's online variant: subtract a global camera model from the vector field
(per-frame median, or a robust similarity fit), normalise motion and residual energy by their
per-frame 95th percentile (with floors, so a still frame's noise is not blown up to 1), fuse
them with configurable weights, optionally weight by a centre prior, and sum over each patch.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def frame_medians(vel, present):  # pragma: no cover - compiled
    """Per-frame median (x, y) of the vectors present, (T, n, 2) and (T, n) -> (T, 2); 0 where none."""
    t, n, _ = vel.shape
    out = np.zeros((t, 2))
    values = np.empty(n)
    for k in range(t):
        for axis in range(2):
            m = 0
            for i in range(n):
                if present[k, i]:
                    values[m] = vel[k, i, axis]
                    m += 1
            if m:
                out[k, axis] = np.median(values[:m])
    return out


def camera_model(velocity: np.ndarray, has: np.ndarray, mode: str, trim: float = 0.7, iters: int = 2) -> np.ndarray:
    """Global motion field (T, gh, gw, 2) fitted to the vectors of each frame.

    ``median``: per-frame median translation. ``similarity``: dx = tx + a x - b y,
    dy = ty + b x + a y on a [-1, 1] grid (pan, zoom, roll), least squares re-fitted ``iters``
    times on the ``trim`` fraction of cells it explains best, batched over frames, on every
    second cell. Zero vectors count (a still background must pull the fit to zero, or a lone
    mover would be "compensated" away). Frames with fewer than 64 vectors use the median.
    """
    t, gh, gw, _ = velocity.shape
    if mode == "none":
        return np.zeros_like(velocity)
    sub = (slice(None), slice(None, None, 2), slice(None, None, 2))
    vel = velocity[sub].reshape(t, -1, 2).astype(np.float64)
    present = has[sub].reshape(t, -1)
    median = frame_medians(vel, present)  # (t, 2)
    if mode == "median":
        return np.broadcast_to(median[:, None, None, :], velocity.shape).astype(np.float32)
    yy, xx = np.mgrid[:gh, :gw]
    x, y = ((xx + 0.5) / gw * 2 - 1)[sub[1:]].ravel(), ((yy + 0.5) / gh * 2 - 1)[sub[1:]].ravel()
    one, zero = np.ones_like(x), np.zeros_like(x)
    a = np.concatenate([np.stack([one, zero, x, -y], 1), np.stack([zero, one, y, x], 1)])  # (2n, 4)
    b = np.concatenate([vel[..., 0], vel[..., 1]], axis=1)  # (t, 2n)
    outer = (a[:, :, None] * a[:, None, :]).reshape(len(a), 16)  # per-row a a^T: normal matrices by one GEMM
    weight = present.astype(np.float64)
    counts = present.sum(axis=1)
    for _ in range(iters + 1):
        w2 = np.concatenate([weight, weight], axis=1)  # (t, 2n)
        normal = (w2 @ outer).reshape(t, 4, 4) + 1e-6 * np.eye(4)
        params = np.linalg.solve(normal, ((w2 * b) @ a)[..., None])[..., 0]  # (t, 4)
        fit = params @ a.T  # (t, 2n)
        n = x.size
        err = np.hypot(b[:, :n] - fit[:, :n], b[:, n:] - fit[:, n:])
        err = np.where(present, err, np.inf)
        rank = np.clip((trim * counts).astype(int) - 1, 0, err.shape[1] - 1)
        cut = np.take_along_axis(np.sort(err, axis=1), rank[:, None], axis=1)
        weight = (err <= cut).astype(np.float64)
    # evaluate the fitted model on the full grid
    xf, yf = ((xx + 0.5) / gw * 2 - 1).ravel(), ((yy + 0.5) / gh * 2 - 1).ravel()
    dx = params[:, :1] + params[:, 2:3] * xf - params[:, 3:4] * yf
    dy = params[:, 1:2] + params[:, 3:4] * xf + params[:, 2:3] * yf
    model = np.stack([dx, dy], axis=-1)
    few = counts < 64
    model[few] = median[few, None, :]
    return model.reshape(velocity.shape).astype(np.float32)


@njit(cache=True, nogil=True)
def _select_pair(x, k):  # pragma: no cover - compiled
    """The k-th and (k+1)-th smallest of ``x`` (reordered in place); the k-th twice if k is the last."""
    lo, hi = 0, len(x) - 1
    while lo < hi:  # Hoare quickselect, median-of-three pivot
        mid = (lo + hi) >> 1
        if x[mid] < x[lo]:
            x[mid], x[lo] = x[lo], x[mid]
        if x[hi] < x[lo]:
            x[hi], x[lo] = x[lo], x[hi]
        if x[hi] < x[mid]:
            x[hi], x[mid] = x[mid], x[hi]
        pivot, i, j = x[mid], lo, hi
        while i <= j:
            while x[i] < pivot:
                i += 1
            while pivot < x[j]:
                j -= 1
            if i <= j:
                x[i], x[j] = x[j], x[i]
                i, j = i + 1, j - 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break  # x[j+1:i] all equal the pivot
    second = x[k]
    if k + 1 < len(x):
        second = x[k + 1]
        for i in range(k + 2, len(x)):
            second = min(second, x[i])
    return x[k], second


@njit(cache=True, nogil=True)
def _rank_pairs(bits, k):  # pragma: no cover - compiled
    """Per row of (T, n) float32 bit patterns: the k-th and (k+1)-th smallest, or None if not all in [0, inf].

    Non-negative floats sort as their bit patterns, so a histogram of the top 12 bits (1/8 octave
    per bin) finds the bin holding rank k in one pass; only that bin's values are selected among.
    """
    t, n = bits.shape
    out = np.empty((t, 2), np.int32)
    hist = np.empty(0x7F9, np.int64)
    buf = np.empty(n, np.int32)
    for r in range(t):
        hist[:] = 0
        for i in range(n):
            v = bits[r, i]
            if v < 0 or v > 0x7F800000:  # negative (-0.0 included) or NaN
                return None
            hist[v >> 20] += 1
        below, key = 0, 0
        while below + hist[key] <= k:
            below += hist[key]
            key += 1
        m, after = 0, np.int32(0x7F800000)  # after: the least value of the bins above
        for i in range(n):
            v = bits[r, i]
            if v >> 20 == key:
                buf[m] = v
                m += 1
            elif v >> 20 > key:
                after = min(after, v)
        out[r, 0], out[r, 1] = _select_pair(buf[:m], k - below)
        if k - below + 1 == m and k + 1 < n:
            out[r, 1] = after
    return out


def percentile(energy: np.ndarray, q: float) -> np.ndarray:
    """``np.percentile(energy, q, axis=1)`` of a (T, n) array, bit for bit (linear interpolation).

    NumPy partitions a copy of each row around four ranks; energies are non-negative, so one
    histogram pass per row finds the two ranks instead (6 -> 1.5 ms a 720p clip: RESULTS.md).
    Anything else (other dtypes, negatives, NaN) goes to NumPy.
    """
    t, n = energy.shape
    index = (n - 1) * (q / 100)
    k = min(int(np.floor(index)), n - 1)
    pairs = _rank_pairs(np.ascontiguousarray(energy).view(np.int32), k) if energy.dtype == np.float32 and n else None
    if pairs is None:
        return np.percentile(energy, q, axis=1)
    a, b = pairs.view(np.float32).T
    gamma = index - (k if index < n - 1 else -1)  # NumPy's weight, where both neighbours are the last
    diff = b - a  # NumPy's _lerp, same operations and dtypes
    return b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma


def normalise(energy: np.ndarray, floor: float) -> np.ndarray:
    """Divide each frame by max(its 95th percentile, floor) and clip to [0, 1]."""
    scale = np.maximum(percentile(energy.reshape(len(energy), -1), 95), floor)
    return np.clip(energy / scale[:, None, None], 0.0, 1.0)


def centre_prior(cells: int, strength: float) -> np.ndarray:
    """1 + strength * Gaussian(sigma = 0.35 side), peak-normalised, as in the reference."""
    c = (np.arange(cells) + 0.5) / cells - 0.5
    g = np.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / (2 * 0.35**2))
    return (1.0 + strength * g).astype(np.float32)


def patch_scores(fused: np.ndarray, cells_per_patch: int) -> np.ndarray:
    """Sum of the fused cell map over each patch: (T, gh, gw) -> (T, gh/c, gw/c)."""
    t, gh, gw = fused.shape
    c = cells_per_patch
    return fused.reshape(t, gh // c, c, gw // c, c).sum(axis=(2, 4))


def moving_share(
    motion: np.ndarray, has: np.ndarray, res: np.ndarray, motion_px: float, residual: float, min_cells: int
) -> float:
    """Share of frames holding a connected region of at least ``min_cells`` cells that moves and changes.

    A cell moves when its camera-compensated motion exceeds ``motion_px`` and changes when its
    motion-compensated residual exceeds ``residual``; a clip without vectors (``has`` all False:
    frame differences) is judged on change alone. A clip-wide percentile missed small movers (a few
    people crossing a fixed camera's view cover 1-2 % of the frame, so the 95th percentile stays at
    zero); regions see them, and still ignore sensor and coding noise, whose spurious vectors leave
    no residual (measured in RESULTS.md, "Static clips").
    """
    from scipy import ndimage

    change = res > residual
    active = (has & (motion > motion_px) & change) if has.any() else change
    within_frames = np.zeros((3, 3, 3), bool)  # 8-connected in each frame, never across frames
    within_frames[1] = True
    labels, count = ndimage.label(active, within_frames)  # one call for the clip, each region in one frame
    large = np.bincount(labels.ravel(), minlength=count + 1) >= min_cells
    large[0] = False  # background
    return int(large[labels].any(axis=(1, 2)).sum()) / max(1, len(active))
