"""Text area, x-height and text-dense crops from OCR line and word boxes.

The text-area ratio is the share of the image's pixels covered by the union of line boxes
(overlaps counted once). A crop is a square window of the training resolution in the OCR'd page's
own pixels (text keeps its reading size instead of being shrunk with the page): :func:`dense_crops`
takes, one after another, the window that holds the most text not yet in a crop (a summed-area
table scores every window position on an 8-pixel grid), so a page with more text than one window
gives several. A crop holds the words whose boxes lie wholly inside it (:func:`crop_lines`).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from curate.ocr.engines import Line
from curate.ocr.text import word_spans


def text_mask(boxes, width: int, height: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = True
    return mask


def text_area_ratio(boxes, width: int, height: int) -> float:
    return float(text_mask(boxes, width, height).mean()) if boxes and width and height else 0.0


def _starts(length: int, side: int, stride: int) -> np.ndarray:
    return np.unique(np.append(np.arange(0, length - side + 1, stride), length - side))


def dense_window(
    mask: np.ndarray,
    side: int,
    stride: int = 8,
    taken: list | None = None,
    max_overlap: float = 1.0,
    near: float = 1.0,
) -> tuple[tuple[int, int, int, int], float, float]:
    """The ``side`` x ``side`` window (clipped to the image) with the most text pixels, among those
    sharing at most ``max_overlap`` of their area with each window of ``taken``; with ``near`` < 1,
    the first in reading order (top to bottom, left to right) that holds at least ``near`` of that.

    Returns (box, share of all text pixels inside it, text density inside it); density 0 where no
    window may be taken.
    """
    h, w = mask.shape
    side = min(side, h, w)
    table = np.zeros((h + 1, w + 1), dtype=np.int64)
    table[1:, 1:] = mask.cumsum(0).cumsum(1)
    ys, xs = _starts(h, side, stride), _starts(w, side, stride)
    y0, x0 = ys[:, None], xs[None, :]
    sums = table[y0 + side, x0 + side] - table[y0, x0 + side] - table[y0 + side, x0] + table[y0, x0]
    for tx0, ty0, tx1, ty1 in taken or ():
        shared = np.clip(np.minimum(x0 + side, tx1) - np.maximum(x0, tx0), 0, None) * np.clip(
            np.minimum(y0 + side, ty1) - np.maximum(y0, ty0), 0, None
        )
        sums = np.where(shared > max_overlap * side * side, -1, sums)
    iy, ix = np.unravel_index(int(np.argmax(sums >= near * sums.max())), sums.shape)
    best = max(0, int(sums[iy, ix]))
    total = int(mask.sum())
    box = (int(xs[ix]), int(ys[iy]), int(xs[ix]) + side, int(ys[iy]) + side)
    return box, best / max(1, total), best / (side * side)


def crop_jpeg(rgb: np.ndarray, box, quality: int = 92) -> bytes:
    x0, y0, x1, y1 = box
    img = Image.fromarray(np.ascontiguousarray(rgb[y0:y1, x0:x1]))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, subsampling=2)
    return buf.getvalue()


def x_height(gray: np.ndarray, box) -> int:
    """The x-height of one line in pixels: from the first to the last row of its box where ink is at
    least half as dense as in its densest row. The x-line and the baseline are such rows (every
    lower-case letter has ink there), ascender and descender rows are not (few letters reach them);
    text without lower case measures its capital or character height. Ink is the darker side of the
    line's range, or the lighter one where the line is light text on a dark ground."""
    x0, y0, x1, y1 = box
    patch = gray[max(0, y0) : y1, max(0, x0) : x1].astype(np.float32)
    if patch.size == 0:
        return 0
    mid = (float(patch.min()) + float(patch.max())) / 2
    ink = patch < mid if patch.mean() > mid else patch > mid
    rows = ink.sum(axis=1)
    if not rows.max():
        return 0
    dense = np.flatnonzero(rows >= rows.max() / 2)
    return int(dense[-1] - dense[0] + 1)


def word_boxes(lines: list[Line]) -> list[tuple[int, int, int, int]]:
    """Every word's box: its x-extent on its line, the line's height."""
    return [(a, line.box[1], b, line.box[3]) for line in lines for a, b in line.words]


def inside(box, window) -> bool:
    return box[0] >= window[0] and box[1] >= window[1] and box[2] <= window[2] and box[3] <= window[3]


CELL = 4  # dense_crops scores windows on 4x4-pixel cells: 16x less work, windows still placed to 8 px


def dense_crops(
    boxes, width: int, height: int, side: int, max_crops: int, min_words: int, max_overlap: float = 0.3
) -> list[tuple]:
    """Up to ``max_crops`` windows, each the one holding the most word pixels not yet in a crop and
    sharing at most ``max_overlap`` of its area with any earlier one, while that window holds at
    least ``min_words`` words whole that no earlier crop holds. (Without the overlap bound, the words
    cut by one crop's edge would draw the next crop onto it.) Windows within 10 % of the most are
    taken in reading order: on a page evenly full of text they then tile it from its top left
    corner, instead of the first landing mid-page and leaving strips no window fits."""
    side = min(side, width, height)
    grid = (-(-width // CELL), -(-height // CELL))

    def cells(box):
        return (box[0] // CELL, box[1] // CELL, -(-box[2] // CELL), -(-box[3] // CELL))

    left = list(boxes)
    windows: list[tuple] = []
    while left and len(windows) < max_crops:
        mask = text_mask([cells(b) for b in left], *grid)
        taken = [cells(w) for w in windows]
        best, _, density = dense_window(mask, side // CELL, 2, taken, max_overlap, near=0.9)
        x0, y0 = min(best[0] * CELL, width - side), min(best[1] * CELL, height - side)
        window = (x0, y0, x0 + side, y0 + side)
        held = [b for b in left if inside(b, window)]
        if density == 0 or len(held) < min_words:
            break
        windows.append(window)
        left = [b for b in left if not inside(b, window)]
    return windows


def crop_lines(lines: list[Line], window) -> list[Line]:
    """The lines of the words lying wholly inside ``window``, in the window's pixels: each line keeps
    the text from its first such word to its last (contiguous on the line, so CJK bigrams survive)."""
    x0, y0 = window[0], window[1]
    out = []
    for line in lines:
        if line.box[1] < window[1] or line.box[3] > window[3]:
            continue
        spans = word_spans(line.text)
        held = [i for i, (a, b) in enumerate(line.words) if a >= window[0] and b <= window[2]]
        if not held or len(spans) != len(line.words):
            continue
        first, last = held[0], held[-1]
        text = line.text[spans[first][0] : spans[last][1]]
        words = tuple((a - x0, b - x0) for a, b in line.words[first : last + 1])
        box = (min(a for a, _ in words), line.box[1] - y0, max(b for _, b in words), line.box[3] - y0)
        out.append(Line(text, line.conf, box, words))
    return out
