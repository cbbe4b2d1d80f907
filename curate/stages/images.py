"""Image and OCR-page decode with the one resize policy, and OCR transcripts."""

from __future__ import annotations

import dataclasses
import io
from typing import Annotated, Literal

from PIL import Image

from curate.media import WHITE, ImageError
from curate.pictures import read_picture
from curate.stage import Stage
from manifests import PositiveInt, Range
from shards import storage

REDUCING_GAP = 3.0  # Pillow's advice: from 3.0 on, reduce-then-resize is indistinguishable from a fair resize


def resize_policy(img: Image.Image, size: int, mode: str, full: tuple[int, int] | None = None) -> Image.Image:
    """``shorter``: shorter side to ``size`` (aspect kept); ``square``: then centre-crop to size x size.

    Images smaller than ``size`` are never upscaled (a filter decides whether they are kept).
    ``full``: the picture's full-resolution size where ``img`` was decoded at a reduced scale, so
    the output size is the same whichever scale the decoder chose. Reductions of 6x or more first
    average whole blocks (``reducing_gap``), leaving the bicubic pass a factor of at least 3.
    """
    w, h = full or img.size
    scale = min(1.0, size / min(w, h))
    target = (max(1, round(w * scale)), max(1, round(h * scale)))
    if target != img.size:
        img = img.resize(target, Image.Resampling.BICUBIC, reducing_gap=REDUCING_GAP)
    if mode == "square":
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    return img


@dataclasses.dataclass(frozen=True)
class ImageDecode(Stage):
    """Decode images and OCR pages, resize by the one policy, re-encode as the shard's ``jpg``."""

    name = "image_decode"
    modalities = ("image", "ocr")
    outputs = ("jpg",)

    size: PositiveInt = 448
    mode: Literal["shorter", "square"] = "shorter"
    quality: Annotated[int, Range(1, 100)] = 92
    # what transparent pixels are composited over (RGB)
    background: tuple[Annotated[int, Range(0, 255)], ...] = WHITE
    # images with more pixels are refused before decoding (a small PNG can hold a huge canvas)
    max_pixels: PositiveInt = 100_000_000

    def __post_init__(self):
        if len(self.background) != 3:
            raise ValueError(f"background: give red, green and blue (0-255), got {list(self.background)}")

    def process_row(self, row: dict) -> dict:
        img, facts = read_picture(row["uri"], row["meta"], self.max_pixels, self.background, min_side=self.size)
        out = resize_policy(img, self.size, self.mode, facts["size"])
        buf = io.BytesIO()
        out.save(buf, format="JPEG", quality=self.quality, subsampling=2)
        row["jpg"] = buf.getvalue()
        row["meta"].update(
            source_blake3=facts["blake3"],
            source_format=facts["format"],
            source_mode=facts["mode"],
            width=facts["width"],
            height=facts["height"],
            out_width=out.size[0],
            out_height=out.size[1],
        )
        if "icc" in facts:
            row["meta"]["source_icc"] = facts["icc"]
        return row


@dataclasses.dataclass(frozen=True)
class OcrText(Stage):
    """Attach an OCR page's known text (JSONL row, ``.txt`` beside the page, or a PDF page's text
    layer) as the ``txt`` field. A PDF page without a text layer passes on without one."""

    name = "ocr_text"
    modalities = ("ocr",)
    outputs = ("txt",)

    def process_row(self, row: dict) -> dict:
        meta = row["meta"]
        text = meta.pop("text", None)
        if text is None and "pdf" in meta:
            return row
        if text is None:
            text_uri = meta.get("text_uri")
            if not text_uri:
                raise ImageError(f"{row['uri']}: no transcript (.txt beside the page or JSONL text)", "no_transcript")
            try:
                text = storage.read_bytes(text_uri).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ImageError(f"{text_uri}: transcript is not UTF-8 ({exc})", "transcript_not_utf8") from None
        row["txt"] = text.encode("utf-8")
        meta["text_chars"] = len(text.strip())
        return row
