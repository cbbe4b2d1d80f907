"""Build the demo corpus from what ships with ovforge and its dependencies, with its ground truth.

* ``videos/``: synthetic clips (H.264 and HEVC; moving objects over textured, sometimes panned
  backgrounds; one static; one truncated file), each with its motion mask (``.mask.npz``).
* ``images/``: the real photographs in scikit-image, scikit-learn and matplotlib, plus duplicate
  families made from some (byte copy, re-encode, resize, crop), a thumbnail too small to keep,
  a text file named ``.jpg`` and a truncated JPEG; ``duplicates.json`` records the families.
* ``ocr/``: rendered pages whose text is known (``.txt`` beside each page); two share most of
  their text; one holds too little text to keep.

``truth.json`` at the top lists what each bad input is and which outcome the pipeline must give.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import io
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "moon",
    "clock",
    "coins",
    "brick",
    "gravel",
)
DUPLICATED = ("astronaut", "coffee", "chelsea", "china", "grace_hopper")

# (name, codec, pan in px/frame, static) -- ~20 clips, the mix the codec stage must handle
CLIPS = [(f"clip{i:02d}_h264", "h264", None, False) for i in range(8)]
CLIPS += [(f"clip{i:02d}_h264_pan", "h264", (1 + i % 2, i % 3 - 1), False) for i in range(8, 12)]
CLIPS += [(f"clip{i:02d}_hevc", "hevc", None, False) for i in range(12, 16)]
CLIPS += [(f"clip{i:02d}_hevc_pan", "hevc", (2, 1), False) for i in range(16, 18)]
CLIPS += [("clip18_h264_static", "h264", None, True)]


def photographs() -> dict[str, np.ndarray]:
    """Real photographs that ship inside PyPI packages (no download)."""
    import matplotlib.cbook
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = {name: getattr(skimage.data, name)() for name in PHOTOS}
    sk = load_sample_images()
    for fname, img in zip(sk.filenames, sk.images, strict=True):
        photos[Path(fname).stem] = img
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        photos["grace_hopper"] = np.asarray(Image.open(f).convert("RGB"))
    return {k: (np.stack([v] * 3, -1) if v.ndim == 2 else v[..., :3]).astype(np.uint8) for k, v in photos.items()}


def _jpeg(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def build_images(out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    families, truth = {}, {}
    for name, arr in sorted(photographs().items()):
        img = Image.fromarray(arr)
        original = out / f"{name}.jpg"
        original.write_bytes(_jpeg(img))
        if name not in DUPLICATED:
            continue
        w, h = img.size
        members = {
            f"{name}__copy.jpg": original.read_bytes(),
            f"{name}__reencoded.jpg": _jpeg(img, quality=55),
            f"{name}__resized.png": None,
            f"{name}__cropped.jpg": _jpeg(img.crop((w // 20, h // 20, w - w // 20, h - h // 20))),
        }
        for fname, data in members.items():
            if data is None:
                img.resize((w // 2, h // 2), Image.Resampling.BICUBIC).save(out / fname)
            else:
                (out / fname).write_bytes(data)
        families[name] = [original.name, *members]
    Image.fromarray(photographs()["coffee"]).resize((48, 32)).save(out / "tiny_thumbnail.jpg")
    truth["tiny_thumbnail.jpg"] = "dropped: min_resolution/too_small"
    (out / "not_an_image.jpg").write_text("this file is text with an image's extension\n")
    truth["not_an_image.jpg"] = "failed: image_decode (not a readable image)"
    whole = _jpeg(Image.fromarray(photographs()["rocket"]))
    (out / "truncated_photo.jpg").write_bytes(whole[: len(whole) // 3])
    truth["truncated_photo.jpg"] = "failed: image_decode (truncated)"
    (out / "duplicates.json").write_text(json.dumps(families, indent=1))
    return truth


def _zen_words() -> list[str]:
    with contextlib.redirect_stdout(io.StringIO()):  # importing it prints the Zen of Python
        import this  # shipped with CPython, rot13-encoded in this.s

    text = codecs.decode(this.s, "rot13")
    return [w.strip(".,!*-'\"").lower() for w in text.split() if w.strip(".,!*-'\"").isalpha()]


def _font():
    import matplotlib

    return ImageFont.truetype(str(Path(matplotlib.get_data_path(), "fonts/ttf/DejaVuSans.ttf")), 22)


PAGE = (640, 480)
MARGIN = 24


def _lines(words: list[str], font) -> list[str]:
    """Greedy wrap: every line fits the page, so the page shows exactly its transcript."""
    lines, line = [], ""
    for word in words:
        candidate = f"{line} {word}".strip()
        if line and font.getlength(candidate) > PAGE[0] - 2 * MARGIN:
            lines.append(line)
            line = word
        else:
            line = candidate
    return [*lines, line] if line else lines


def _render(text: str, font) -> Image.Image:
    img = Image.new("RGB", PAGE, "white")
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(text.splitlines()):
        draw.text((MARGIN, MARGIN + 32 * i), line, fill="black", font=font)
    return img


def build_ocr(out: Path, pages: int = 30, seed: int = 0) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    words, font = _zen_words(), _font()
    max_lines = (PAGE[1] - 2 * MARGIN) // 32
    texts = []
    for _ in range(pages - 1):
        page = [rng.choice(words) for _ in range(rng.randint(40, 90))]
        texts.append("\n".join(_lines(page, font)[:max_lines]))
    near = texts[0].splitlines()
    near[-1] = " ".join(rng.choice(words) for _ in range(4))  # page 29 shares all but its last line
    texts.append("\n".join(near))
    texts.append("beautiful")  # too little text to keep
    for i, text in enumerate(texts):
        _render(text, font).save(out / f"page{i:02d}.png")
        (out / f"page{i:02d}.txt").write_text(text + "\n")
    (out / "near_duplicates.json").write_text(json.dumps([["page00.png", f"page{pages - 1:02d}.png"]]))
    return {f"page{len(texts) - 1:02d}.png": "dropped: text_length/too_little_text"}


def build_videos(out: Path, frames: int = 64, size: int = 256) -> dict:
    from curate.demo.synthetic_video import make_clip

    out.mkdir(parents=True, exist_ok=True)
    facts = {}
    for i, (name, codec, pan, static) in enumerate(CLIPS):
        path = out / f"{name}.mp4"
        mask = make_clip(path, codec=codec, size=size, frames=frames, pan=pan, static=static, seed=i)
        np.savez_compressed(out / f"{name}.mask.npz", mask=mask)
        facts[path.name] = {"codec": codec, "pan": pan, "static": static, "moving_pixels": int(mask.sum())}
    whole = (out / "clip00_h264.mp4").read_bytes()
    (out / "clip19_truncated.mp4").write_bytes(whole[: len(whole) // 2])
    (out / "clips.json").write_text(json.dumps(facts, indent=1))
    return {"clip19_truncated.mp4": "failed: video_probe (truncated)"}


def build(out_dir: str) -> dict:
    out = Path(out_dir)
    truth = {}
    for kind, builder in (("videos", build_videos), ("images", build_images), ("ocr", build_ocr)):
        truth.update({f"{kind}/{k}": v for k, v in builder(out / kind).items()})
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m curate demo-corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder to write videos/, images/, ocr/ and truth.json into")
    args = parser.parse_args(argv)
    truth = build(args.out_dir)
    counts = {k: sum(1 for p in Path(args.out_dir, k).iterdir()) for k in ("videos", "images", "ocr")}
    print(json.dumps({"out": args.out_dir, "files": counts, "bad_inputs": len(truth)}))
    return 0
