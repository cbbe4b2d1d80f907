"""Which (t, h, w) patches to keep: codec top-K, static fallback, chunk-wise and spatial modes.

All modes return int16 (K, 3) positions sorted by (t, h, w) on the same grid as the ViT's
tokens, so one reader serves them all. Ties are broken by grid order (stable sort), so a
clip always selects the same patches.
"""

from __future__ import annotations

import numpy as np


def budget_k(budget: float, candidates: int) -> int:
    """K = round(budget * candidates); the paper's range is 3.1 %-25 % (512-4096 of 16,384)."""
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"budget must be in (0, 1], got {budget}")
    return max(1, min(candidates, int(round(budget * candidates))))


def _sorted(t: np.ndarray, h: np.ndarray, w: np.ndarray) -> np.ndarray:
    pos = np.stack([t, h, w], axis=1).astype(np.int16)
    return pos[np.lexsort((pos[:, 2], pos[:, 1], pos[:, 0]))]


def _top(flat: np.ndarray, count: int) -> np.ndarray:
    """Mask of the ``count`` largest finite values, ties in grid order (``argsort(-flat, "stable")[:count]``).

    One partition finds the cut instead of sorting all T x Hp x Wp scores.
    """
    if count <= 0:
        return np.zeros(flat.size, bool)
    flat = np.where(np.isnan(flat), -np.inf, flat)  # NaN would partition as the largest; never chosen
    if count >= flat.size:
        return np.isfinite(flat)
    cut = np.partition(flat, flat.size - count)[flat.size - count]  # the count-th largest
    mask = flat > cut
    mask[np.flatnonzero(flat == cut)[: count - int(mask.sum())]] = True
    return mask & np.isfinite(flat)


def top_k(scores: np.ndarray, k: int, valid: np.ndarray | None = None, first_frame: str = "score") -> np.ndarray:
    """Global top-K of (T, Hp, Wp) scores; ``first_frame="whole"`` keeps frame 0 entirely first.

    ``valid`` (Hp, Wp) marks patches with content (pad mode); padding is never chosen except as
    part of a whole first frame, which is kept as a picture (the reference's keep_first_full_frame).
    """
    t, hp, wp = scores.shape
    s = scores.astype(np.float64)
    if valid is not None:
        s[:, ~valid] = -np.inf
    chosen = np.zeros(s.shape, bool)
    if first_frame == "whole":
        chosen[0] = True
        s[0] = -np.inf
    elif first_frame != "score":
        raise ValueError(f"first_frame must be 'whole' or 'score', got {first_frame!r}")
    chosen.ravel()[_top(s.ravel(), k - int(chosen.sum()))] = True
    return _sorted(*np.nonzero(chosen))


def uniform_frames(scores: np.ndarray, k: int, valid: np.ndarray | None = None) -> np.ndarray:
    """Static-clip fallback: whole frames evenly spaced in time, the remainder by top-K.

    With nothing moving, saliency is noise; whole frames carry the scene's appearance instead.
    """
    t, hp, wp = scores.shape
    per_frame = int(valid.sum()) if valid is not None else hp * wp
    n = min(t, k // per_frame)
    chosen = np.zeros(scores.shape, bool)
    if n:
        frames = np.unique(np.linspace(0, t - 1, n).round().astype(int))
        chosen[frames] = True if valid is None else valid
    if valid is not None:
        chosen[:, ~valid] = False
    s = np.where(chosen, -np.inf, scores.astype(np.float64))
    if valid is not None:
        s[:, ~valid] = -np.inf
    chosen.ravel()[_top(s.ravel(), k - int(chosen.sum()))] = True
    return _sorted(*np.nonzero(chosen))


def chunk_positions(n_frames: int, grid: int = 16, frames: int = 64) -> np.ndarray:
    """Chunk-wise patchification: ``n_frames`` whole frames, t = floor(linspace(0, frames-1, n))."""
    ts = np.floor(np.linspace(0, frames - 1, n_frames)).astype(int)
    t, h, w = np.meshgrid(ts, np.arange(grid), np.arange(grid), indexing="ij")
    return _sorted(t.ravel(), h.ravel(), w.ravel())


def spatial_positions(height: int, width: int, patch: int = 16) -> np.ndarray:
    """Single-image patchification: every patch of an image, t = 0 (any size divisible by ``patch``)."""
    if height % patch or width % patch:
        raise ValueError(f"image {width}x{height} is not divisible by the patch size {patch}")
    h, w = np.meshgrid(np.arange(height // patch), np.arange(width // patch), indexing="ij")
    return _sorted(np.zeros(h.size, int), h.ravel(), w.ravel())
