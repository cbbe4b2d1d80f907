"""Metadata filters: each sets ``keep`` and a ``code: detail`` drop reason."""

from __future__ import annotations

import dataclasses

from curate.stage import Stage, register


@register
@dataclasses.dataclass(frozen=True)
class MinResolution(Stage):
    """Drop inputs whose shorter source side is below ``min_side`` pixels."""

    name = "min_resolution"
    modalities = ("image", "video", "ocr")
    min_side: int = 64

    def process_row(self, row: dict) -> dict:
        w, h = row["meta"].get("width"), row["meta"].get("height")
        if w is None or h is None:
            raise KeyError("min_resolution needs width/height in meta: put it after a decode or probe stage")
        if min(w, h) < self.min_side:
            row["keep"], row["drop_reason"] = False, f"too_small: {w}x{h}, shorter side < {self.min_side}"
        return row


@register
@dataclasses.dataclass(frozen=True)
class AspectRatio(Stage):
    """Drop inputs whose long/short side ratio exceeds ``max_ratio``."""

    name = "aspect_ratio"
    max_ratio: float = 3.0

    def process_row(self, row: dict) -> dict:
        w, h = row["meta"]["width"], row["meta"]["height"]
        if max(w, h) / min(w, h) > self.max_ratio:
            row["keep"], row["drop_reason"] = False, f"extreme_aspect: {w}x{h} beyond {self.max_ratio}:1"
        return row


@register
@dataclasses.dataclass(frozen=True)
class TextLength(Stage):
    """Drop OCR pages with fewer than ``min_chars`` characters of text."""

    name = "text_length"
    modalities = ("ocr",)
    min_chars: int = 20

    def process_row(self, row: dict) -> dict:
        n = row["meta"].get("text_chars", 0)
        if n < self.min_chars:
            row["keep"], row["drop_reason"] = False, f"too_little_text: {n} < {self.min_chars} characters"
        return row


@register
@dataclasses.dataclass(frozen=True)
class Duration(Stage):
    """Drop videos shorter than ``min_seconds`` or longer than ``max_seconds``."""

    name = "duration"
    modalities = ("video",)
    min_seconds: float = 0.5
    max_seconds: float = 3600.0

    def process_row(self, row: dict) -> dict:
        d = row["meta"]["duration"]
        if not self.min_seconds <= d <= self.max_seconds:
            row["keep"] = False
            row["drop_reason"] = f"duration: {d:.2f}s outside [{self.min_seconds}, {self.max_seconds}]"
        return row
