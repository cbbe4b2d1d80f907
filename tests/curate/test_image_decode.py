"""Image decode against known pixel values: high bit depths scaled by their white point (or refused
with the reason), transparency over a configured colour, ICC profiles converted to sRGB, the
stage's own pixel limit and reduced-scale JPEG decode, and a reason code for each way a file fails."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import tifffile
from PIL import Image

from curate.media import decode_image
from curate.stage import new_rows, run_in_process, to_rows
from curate.stages.images import ImageDecode, OcrText, resize_policy
from shards import fields


def _bands(values, dtype) -> np.ndarray:
    """Four 32x32 blocks side by side, one value each (flat blocks survive JPEG almost exactly)."""
    return np.concatenate([np.full((32, 32), v, dtype) for v in values], axis=1)


def _decode(tmp_path, name: str, data: bytes, **params) -> dict:
    path = tmp_path / name
    path.write_bytes(data)
    batch = new_rows([{"key": "k", "uri": str(path), "modality": "image", "partition": 0, "meta": {}}])
    return to_rows(run_in_process([ImageDecode(size=448, **params)], batch))[0]


def _band_means(row) -> list[int]:
    pixels = fields.image(row["jpg"]).astype(float)
    return [round(pixels[8:24, 32 * i + 8 : 32 * i + 24].mean()) for i in range(4)]


def _png(img: Image.Image, **info) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **info)
    return buf.getvalue()


def _tiff(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array)
    return buf.getvalue()


def test_16_bit_png_is_scaled_not_clipped_to_white(tmp_path):
    row = _decode(tmp_path, "g16.png", _png(Image.fromarray(_bands([0, 16448, 40092, 65535], np.uint16))))
    assert row["status"] == "live" and row["meta"]["source_mode"] == "I;16"
    assert _band_means(row) == pytest.approx([0, 64, 156, 255], abs=2)


@pytest.mark.parametrize(
    ("dtype", "values", "expected"),
    [
        (np.float32, [0.0, 0.25, 0.5, 1.0], [0, 64, 128, 255]),
        (np.int32, [0, 2**29, 2**30, 2**31 - 1], [0, 64, 128, 255]),
        (np.uint32, [0, 2**30, 2**31, 2**32 - 1], [0, 64, 128, 255]),
        (np.uint16, [0, 257 * 64, 257 * 128, 65535], [0, 64, 128, 255]),
    ],
)
def test_tiffs_of_every_sample_type_keep_their_values(tmp_path, dtype, values, expected):
    row = _decode(tmp_path, "t.tif", _tiff(_bands(values, dtype)))
    assert row["status"] == "live", row["detail"]
    assert _band_means(row) == pytest.approx(expected, abs=2)


def test_samples_without_a_white_point_are_refused_with_the_reason(tmp_path):
    row = _decode(tmp_path, "hdr.tif", _tiff(_bands([0.0, 3.5, 100.0, 1000.0], np.float32)))
    assert row["status"] == "failed"
    assert "float samples span 0..1000, outside 0..1: no white point" in row["detail"]
    row = _decode(tmp_path, "neg.tif", _tiff(_bands([-5, 0, 10, 20], np.int32)))
    assert row["status"] == "failed" and "signed 32-bit samples span -5..20" in row["detail"]


def test_transparency_is_composited_over_white_or_the_configured_colour(tmp_path):
    rgba = np.zeros((32, 128, 4), np.uint8)
    rgba[:, :, 0] = 200  # red everywhere, opaque in the first half only
    rgba[:, :64, 3] = 255
    data = _png(Image.fromarray(rgba, "RGBA"))
    pixels = fields.image(_decode(tmp_path, "a.png", data)["jpg"]).astype(int)
    assert np.abs(pixels[8:24, 8:56] - (200, 0, 0)).max() <= 3
    assert np.abs(pixels[8:24, 72:120] - (255, 255, 255)).max() <= 3
    pixels = fields.image(_decode(tmp_path, "a.png", data, background=(0, 128, 0))["jpg"]).astype(int)
    assert np.abs(pixels[8:24, 72:120] - (0, 128, 0)).max() <= 3
    palette = Image.fromarray(np.repeat([[0] * 64 + [1] * 64], 32, axis=0).astype(np.uint8), "P")
    palette.putpalette([10, 20, 30, 0, 0, 0])
    pixels = fields.image(_decode(tmp_path, "p.png", _png(palette, transparency=1))["jpg"]).astype(int)
    assert np.abs(pixels[8:24, 8:56] - (10, 20, 30)).max() <= 3
    assert np.abs(pixels[8:24, 72:120] - (255, 255, 255)).max() <= 3


def _swapped_primaries_profile() -> bytes:
    """An ICC v2 RGB matrix/TRC profile whose red and blue colorants are sRGB's blue and red.

    Its pure red is sRGB's pure blue: a stark, known answer for the conversion.
    """

    def s15(*xyz):
        return b"".join(struct.pack(">i", round(v * 65536)) for v in xyz)

    def xyz_tag(*xyz):
        return b"XYZ \0\0\0\0" + s15(*xyz)

    desc = b"swapped"
    tags = {
        b"desc": b"desc\0\0\0\0" + struct.pack(">I", len(desc) + 1) + desc + b"\0" + b"\0" * 8 + b"\0\0\0" + b"\0" * 67,
        b"wtpt": xyz_tag(0.9642, 1.0, 0.8249),
        b"rXYZ": xyz_tag(0.1431, 0.0606, 0.7141),  # sRGB's blue colorant (D50)
        b"gXYZ": xyz_tag(0.3851, 0.7169, 0.0971),
        b"bXYZ": xyz_tag(0.4361, 0.2225, 0.0139),  # sRGB's red colorant
        b"rTRC": b"curv\0\0\0\0" + struct.pack(">IH", 1, 0x0233) + b"\0\0",  # gamma 2.2
        b"cprt": b"text\0\0\0\0public domain\0\0\0\0",
    }
    tags[b"gTRC"] = tags[b"bTRC"] = tags[b"rTRC"]
    table, body, offset = b"", b"", 128 + 4 + 12 * len(tags)
    for sig, data in tags.items():
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data + b"\0" * (-len(data) % 4)
    size = offset + len(body)
    header = struct.pack(">I4sI4s4s4s", size, b"lcms", 0x02100000, b"mntr", b"RGB ", b"XYZ ")
    header += b"\0" * 12 + b"acsp" + b"\0" * 24 + struct.pack(">I", 0) + s15(0.9642, 1.0, 0.8249)
    header += b"\0" * (128 - len(header))
    return header + struct.pack(">I", len(tags)) + table + body


def test_icc_profile_is_converted_to_srgb(tmp_path):
    red = np.zeros((32, 128, 3), np.uint8)
    red[..., 0] = 255
    row = _decode(tmp_path, "icc.png", _png(Image.fromarray(red), icc_profile=_swapped_primaries_profile()))
    assert row["meta"]["source_icc"] == "converted to sRGB"
    assert np.abs(fields.image(row["jpg"])[8:24, 8:120].astype(int) - (0, 0, 255)).max() <= 6
    row = _decode(tmp_path, "plain.png", _png(Image.fromarray(red)))
    assert "source_icc" not in row["meta"]
    assert np.abs(fields.image(row["jpg"])[8:24, 8:120].astype(int) - (255, 0, 0)).max() <= 6


def test_the_stage_pixel_limit_and_reduced_scale_jpeg_decode(tmp_path):
    row = _decode(tmp_path, "big.png", _png(Image.new("L", (200, 100))), max_pixels=10_000)
    assert row["status"] == "failed" and "too many pixels: 200x100 > 10000" in row["detail"]
    buf = io.BytesIO()
    Image.new("RGB", (4000, 3000), (90, 140, 200)).save(buf, format="JPEG")
    img, facts = decode_image(buf.getvalue(), "huge.jpg", min_side=448)
    assert (facts["width"], facts["height"]) == (4000, 3000)
    assert img.size == (1000, 750)  # decoded at 1/4 scale: the shorter side still >= 448
    row = _decode(tmp_path, "huge.jpg", buf.getvalue())
    assert (row["meta"]["width"], row["meta"]["out_width"], row["meta"]["out_height"]) == (4000, 597, 448)


def test_each_way_an_image_or_page_fails_has_its_own_reason_code(tmp_path):
    """Summaries count causes: never a bare exception class such as ``image_decode/ValueError``."""
    photo = _png(Image.new("RGB", (64, 48), (10, 200, 30)))
    cases = {
        "html.jpg": (b"<!doctype html><html>404</html>", "image_decode/unreadable"),
        "empty.png": (b"", "image_decode/unreadable"),
        "cut.png": (photo[: len(photo) // 2], "image_decode/truncated"),
        "big.png": (_png(Image.new("L", (200, 100))), "image_decode/too_many_pixels"),
        "hdr.tif": (_tiff(_bands([0.0, 1000.0, 0.0, 0.0], np.float32)), "image_decode/no_white_point"),
    }
    for name, (data, reason) in cases.items():
        row = _decode(tmp_path, name, data, max_pixels=10_000)
        assert (row["status"], row["reason"]) == ("failed", reason), (name, row["detail"])
    gone = new_rows([{"key": "g", "uri": str(tmp_path / "gone.png"), "modality": "ocr", "partition": 0, "meta": {}}])
    row = to_rows(run_in_process([ImageDecode()], gone))[0]
    assert (row["status"], row["reason"]) == ("failed", "image_decode/not_found")
    (tmp_path / "page.png").write_bytes(photo)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    pages = [
        {"uri": str(tmp_path / "page.png"), "meta": {"text_uri": None}},
        {"uri": str(tmp_path / "page.png"), "meta": {"text_uri": str(tmp_path / "latin1.txt")}},
    ]
    batch = new_rows([{"key": f"p{i}", "modality": "ocr", "partition": 0, **p} for i, p in enumerate(pages)])
    rows = to_rows(run_in_process([OcrText()], batch))
    assert [r["reason"] for r in rows] == ["ocr_text/no_transcript", "ocr_text/transcript_not_utf8"]


def _psnr(a: Image.Image, b: Image.Image) -> float:
    mse = np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.mark.parametrize(("photo", "size"), [("astronaut", 100), ("coffee", 128), ("retina", 128), ("retina", 200)])
def test_reduced_scale_decode_stays_close_to_the_full_resolution_resize(photo, size):
    """JPEGs decode at a DCT-reduced scale and other formats reduce by whole blocks before the
    bicubic resize: same output size as the full-resolution resize, within a stated PSNR of it
    (measured on these photos: JPEG 33.8-41 dB, PNG above 55 dB)."""
    import skimage.data

    img = Image.fromarray(getattr(skimage.data, photo)()[..., :3])
    jpeg, png = io.BytesIO(), io.BytesIO()
    img.save(jpeg, format="JPEG", quality=95)
    img.save(png, format="PNG")
    for data, min_psnr in ((jpeg.getvalue(), 33.0), (png.getvalue(), 50.0)):
        full, _ = decode_image(data, photo)
        reference = full.resize(resize_policy(full, size, "shorter").size, Image.Resampling.BICUBIC)
        fast, facts = decode_image(data, photo, min_side=size)
        out = resize_policy(fast, size, "shorter", facts["size"])
        assert facts["size"] == img.size and out.size == reference.size
        assert _psnr(out, reference) >= min_psnr
    assert fast.size == img.size  # only JPEGs decode at a reduced scale


def test_a_turned_jpeg_decoded_at_reduced_scale_gets_the_displayed_size(tmp_path):
    """EXIF orientation 6 (a quarter turn): the stored 2001x1000 picture is shown 1000x2001, so the
    output is 448x896 (from the full size), not a size rounded from the 1/2-scale decode (1001x500)."""
    img = Image.new("RGB", (2001, 1000), (90, 140, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    decoded, facts = decode_image(buf.getvalue(), "turned.jpg", min_side=448)
    assert decoded.size == (500, 1001) and facts["size"] == (1000, 2001)
    row = _decode(tmp_path, "turned.jpg", buf.getvalue())
    assert (row["meta"]["out_width"], row["meta"]["out_height"]) == (448, 896)
