"""Metadata filters: each a :class:`~curate.stage.Filter` returning a ``code: detail`` drop reason or None."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from curate.stage import Filter
from manifests import NonNegativeFloat, NonNegativeInt, PositiveFloat, Range


@dataclasses.dataclass(frozen=True)
class MinResolution(Filter):
    """Drop inputs whose shorter source side is below ``min_side`` pixels."""

    name = "min_resolution"
    modalities = ("image", "video", "ocr")
    min_side: NonNegativeInt = 64

    def reason(self, row: dict) -> str | None:
        w, h = row["meta"].get("width"), row["meta"].get("height")
        if w is None or h is None:
            raise KeyError("min_resolution needs width/height in meta: put it after a decode or probe stage")
        if min(w, h) < self.min_side:
            return f"too_small: {w}x{h}, shorter side < {self.min_side}"
        return None


@dataclasses.dataclass(frozen=True)
class AspectRatio(Filter):
    """Drop inputs whose long/short side ratio, as displayed (a video's pixels may not be square), exceeds
    ``max_ratio``."""

    name = "aspect_ratio"
    max_ratio: Annotated[float, Range(1.0)] = 3.0

    def reason(self, row: dict) -> str | None:
        w, h = row["meta"]["width"], row["meta"]["height"]
        shown = w * row["meta"].get("pixel_aspect", 1.0)
        if max(shown, h) / min(shown, h) > self.max_ratio:
            size = f"{w}x{h}" + (f" (shown {round(shown)}x{h})" if shown != w else "")
            return f"extreme_aspect: {size} beyond {self.max_ratio}:1"
        return None


@dataclasses.dataclass(frozen=True)
class TextLength(Filter):
    """Drop samples with fewer than ``min_chars`` characters of text: an OCR page's transcript, or the
    caption of an image or video from a captioned source (a missing caption counts as empty). Images
    and videos of uncaptioned sources (folders of files) have no text to measure and pass."""

    name = "text_length"
    modalities = ("image", "video", "ocr")
    min_chars: NonNegativeInt = 20

    def reason(self, row: dict) -> str | None:
        meta = row["meta"]
        if row["modality"] == "ocr":
            n = meta.get("text_chars", 0)
        elif "caption" in meta:
            n = len((meta["caption"] or "").strip())
        else:
            return None
        if n < self.min_chars:
            return f"too_little_text: {n} < {self.min_chars} characters"
        return None


@dataclasses.dataclass(frozen=True)
class Duration(Filter):
    """Drop videos shorter than ``min_seconds`` or longer than ``max_seconds`` (a clip table's row:
    the part of its ``[start, end)`` span the video covers)."""

    name = "duration"
    modalities = ("video",)
    min_seconds: NonNegativeFloat = 0.5
    max_seconds: PositiveFloat = 3600.0

    def reason(self, row: dict) -> str | None:
        d = row["meta"]["duration"]
        if row["meta"].get("span"):
            start, end = row["meta"]["span"]
            d = max(0.0, min(d, d if end is None else end) - start)
        if not self.min_seconds <= d <= self.max_seconds:
            return f"duration: {d:.2f}s outside [{self.min_seconds}, {self.max_seconds}]"
        return None


@dataclasses.dataclass(frozen=True)
class MotionFilter(Filter):
    """Drop clips with too little or too much motion, from the statistics ``codec_patchify`` computed.

    Peers decode vectors only to reduce them to such a score; here it comes free with the tokens:
    the camera-compensated motion p95 (px/frame at the codec grid, so a pan is not motion) and the
    motion-compensated residual p95 (grey levels). ``drop_static`` drops clips whose selection fell
    back to uniform frames because nothing moved.
    """

    name = "motion_filter"
    modalities = ("video",)
    min_motion_px: NonNegativeFloat = 0.0  # camera-compensated motion p95 below this: too still
    max_motion_px: NonNegativeFloat = 64.0  # above this: shake, cuts or noise rather than motion
    min_residual: NonNegativeFloat = 0.0  # residual p95 below this: nothing new appears
    drop_static: bool = True

    def reason(self, row: dict) -> str | None:
        codec = row["meta"].get("codec")
        if not codec or "saliency" not in codec:
            raise KeyError("motion_filter needs the codec facts in meta: put it after codec_patchify")
        motion, residual = codec["saliency"]["motion_p95_px"], codec["saliency"]["residual_p95"]
        reason = None
        if self.drop_static and codec.get("selection") == "static_fallback":
            reason = f"static: motion p95 {motion:g} px/frame, residual p95 {residual:g}"
        elif motion < self.min_motion_px:
            reason = f"too_little_motion: p95 {motion:g} < {self.min_motion_px:g} px/frame"
        elif motion > self.max_motion_px:
            reason = f"too_much_motion: p95 {motion:g} > {self.max_motion_px:g} px/frame"
        elif residual < self.min_residual:
            reason = f"too_little_residual: p95 {residual:g} < {self.min_residual:g}"
        return reason
