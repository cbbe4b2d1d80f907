"""Text area and text-dense crops from OCR line boxes.

The text-area ratio is the share of the image's pixels covered by the union of line boxes
(overlaps counted once). A crop is the square window of the training resolution, in the OCR'd
image's own pixels (text keeps its native size instead of being shrunk with the page), that
holds the most text pixels; a summed-area table scores every window position on an 8-pixel grid.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def text_mask(boxes, width: int, height: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = True
    return mask


def text_area_ratio(boxes, width: int, height: int) -> float:
    return float(text_mask(boxes, width, height).mean()) if boxes and width and height else 0.0


def _starts(length: int, side: int, stride: int) -> np.ndarray:
    return np.unique(np.append(np.arange(0, length - side + 1, stride), length - side))


def dense_window(mask: np.ndarray, side: int, stride: int = 8) -> tuple[tuple[int, int, int, int], float, float]:
    """The ``side`` x ``side`` window (clipped to the image) with the most text pixels.

    Returns (box, share of all text pixels inside it, text density inside it).
    """
    h, w = mask.shape
    side = min(side, h, w)
    table = np.zeros((h + 1, w + 1), dtype=np.int64)
    table[1:, 1:] = mask.cumsum(0).cumsum(1)
    ys, xs = _starts(h, side, stride), _starts(w, side, stride)
    y0, x0 = ys[:, None], xs[None, :]
    sums = table[y0 + side, x0 + side] - table[y0, x0 + side] - table[y0 + side, x0] + table[y0, x0]
    iy, ix = np.unravel_index(int(np.argmax(sums)), sums.shape)
    best = int(sums[iy, ix])
    total = int(mask.sum())
    box = (int(xs[ix]), int(ys[iy]), int(xs[ix]) + side, int(ys[iy]) + side)
    return box, best / max(1, total), best / (side * side)


def crop_jpeg(rgb: np.ndarray, box, quality: int = 92) -> bytes:
    x0, y0, x1, y1 = box
    img = Image.fromarray(np.ascontiguousarray(rgb[y0:y1, x0:x1]))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, subsampling=2)
    return buf.getvalue()
