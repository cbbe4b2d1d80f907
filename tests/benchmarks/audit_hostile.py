"""Audit of hostile inputs (issue 27): does a run keep going, account for every input once and say why?

    .venv/bin/python tests/benchmarks/audit_hostile.py [--keep DIR]

Builds a folder of named hostile files, each made here with Pillow, PyAV or plain bytes (no mocks),
runs ``python -m curate run`` on it (executor "local", in a subprocess: image_decode, ocr_text,
video_probe and codec_patchify), then reads the ledger and summary.json. Per case it checks that the
run did not crash, that the input is in the ledger exactly once with its status (kept, dropped with a
reason, failed with a detail), that the status is one the case allows, and that the reason is specific
(``image_decode/ValueError``, a bare exception class, is reported as "coarse"). Files that are not
inputs by design (a dotfile, a symlink loop, a folder named like a file) must be absent from the ledger
and the run must still finish. Run-level cases (an output folder that cannot be made, a missing source,
a wrong parameter, the output inside the input) are separate runs that must end with exit 0, or with
one ``error:`` line and no traceback.

Verdicts: ok, coarse (accounted, reason is an exception class name), UNEXPECTED (accounted, with another
status than the case names), LOST (not in the ledger, or more than once), CRASH (the run died).
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import av
import numpy as np
from common import machine
from PIL import Image

from curate.demo.synthetic_video import make_clip
from curate.ledger import read_ledger
from curate.sources import make_key

REPO = Path(__file__).resolve().parents[2]
KEPT, DROPPED, FAILED, ABSENT = "kept", "dropped", "failed", "not an input"


# ---------------------------------------------------------------------------------------------- makers


def _photo(w: int = 96, h: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(np.kron(coarse, np.ones((8, 8, 1), np.uint8))[:h, :w])


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_header_bomb(side: int) -> bytes:
    """A valid small PNG whose IHDR declares ``side`` x ``side`` (its IDAT holds far fewer pixels)."""
    data = bytearray(_bytes(Image.new("L", (8, 8)), "PNG"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", side, side)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    return bytes(data)


def _exif_rotated_jpeg() -> bytes:
    """64 wide, 32 high as stored, EXIF orientation 6 (rotate 90 degrees clockwise to view)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _bytes(_photo(64, 32), "JPEG", exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [_photo(48, 48, seed=s).convert("P") for s in range(4)]
    return _bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)


def _write_video(path: Path, encoder: str, size: tuple[int, int], frames: int, pix_fmt: str = "yuv420p", pts=None):
    """A real encode of a moving textured square; ``pts`` (in 1/1000 s) gives variable frame timing."""
    w, h = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream(encoder, rate=24)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.codec_context.options = {"x265-params": "log-level=error"} if encoder == "libx265" else {}
        if pts is not None:
            stream.time_base = Fraction(1, 1000)
        base = np.asarray(_photo(w + 8, h + 8).resize((w + 8, h + 8)))
        for t in range(frames):
            frame = base[:h, :w].copy()
            frame[h // 4 : h // 2, (t * 3) % w : (t * 3) % w + max(2, w // 4)] = (220, 60, 30)
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            if pts is not None:
                vf.pts, vf.time_base = pts[t], Fraction(1, 1000)
            out.mux(stream.encode(vf))
        out.mux(stream.encode())


def _audio_only(path: Path, fmt: str | None = None) -> None:
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream("aac", rate=16000)
        stream.layout = "mono"
        tone = np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000).astype(np.float32)
        for i in range(0, 16000, 1024):
            chunk = tone[i : i + 1024]
            if len(chunk) < 1024:
                break
            frame = av.AudioFrame.from_ndarray(chunk[None], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def build_corpus(root: Path) -> list[dict]:
    """Write every hostile file under ``root`` (images/, videos/, ocr/); return the cases.

    A case: name, source-relative path (bytes for a name that is not UTF-8), the statuses it allows,
    and, for some, a check of the kept sample's facts against the file's known truth."""
    img, vid, ocr, elsewhere = root / "images", root / "videos", root / "ocr", root / "elsewhere"
    for d in (img, vid, ocr, elsewhere):
        d.mkdir(parents=True)
    cases: list[dict] = []

    def add(name, rel, expect, data=None, check=None, folder=img):
        """``rel``: a name under ``folder`` (bytes for one that is not UTF-8), or a JSONL row ``FILE#N``."""
        path = os.path.join(os.fsencode(folder), rel) if isinstance(rel, bytes) else os.fspath(folder / rel)
        if data is not None:
            with open(path, "wb") as f:
                f.write(data)
        cases.append({"case": name, "key": make_key(_shown(path)), "expect": expect, "check": check})

    jpeg, png = _bytes(_photo(), "JPEG", quality=90), _bytes(_photo(), "PNG")
    # -- images: broken or lying files
    add("truncated JPEG", "truncated.jpg", {FAILED, KEPT}, jpeg[: len(jpeg) // 2])
    add("truncated PNG", "truncated.png", {FAILED}, png[: len(png) // 2])
    add("zero-byte .jpg", "empty.jpg", {FAILED}, b"")
    add("zero-byte .png", "empty.png", {FAILED}, b"")
    add("random bytes .jpg", "random.jpg", {FAILED}, np.random.default_rng(1).bytes(4096))
    add("HTML named .jpg", "page.jpg", {FAILED}, b"<!doctype html><html><body>404 Not Found</body></html>\n")
    add("PNG with a corrupted chunk", "bad_chunk.png", {FAILED, KEPT}, png[:40] + bytes([png[40] ^ 0xFF]) + png[41:])
    add("JPEG with bytes after EOI", "trailing.jpg", {KEPT}, jpeg + b"\x00garbage" * 64)
    add("truncated TIFF", "truncated.tif", {FAILED}, _bytes(_photo(), "TIFF")[:300])
    add("random bytes .webp", "random.webp", {FAILED}, np.random.default_rng(2).bytes(2048))
    add("PNG header bomb 20000x20000", "bomb.png", {FAILED, DROPPED}, _png_header_bomb(20000))
    # -- images: unusual but valid
    add("JPEG named .png", "actually_jpeg.png", {KEPT}, jpeg)
    add("JPEG with no extension", "noextension", {KEPT}, jpeg)
    add(".jfif", "photo.jfif", {KEPT}, jpeg)
    add("progressive JPEG", "progressive.jpg", {KEPT}, _bytes(_photo(), "JPEG", progressive=True))
    grey16 = Image.fromarray((np.arange(64 * 96).reshape(64, 96) * 9).astype(np.uint16))
    add("16-bit grayscale PNG", "grey16.png", {KEPT}, _bytes(grey16, "PNG"))
    f32 = Image.fromarray(np.linspace(0, 1, 64 * 96, dtype=np.float32).reshape(64, 96), mode="F")
    add("float32 TIFF", "float32.tif", {KEPT}, _bytes(f32, "TIFF"))
    add("CMYK JPEG", "cmyk.jpg", {KEPT}, _bytes(_photo().convert("CMYK"), "JPEG"))
    add("CMYK TIFF", "cmyk.tif", {KEPT}, _bytes(_photo().convert("CMYK"), "TIFF"))
    pal = _photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    add("palette PNG with transparency", "palette_t.png", {KEPT}, _bytes(pal, "PNG", transparency=0))
    add("RGBA PNG", "rgba.png", {KEPT}, _bytes(_photo().convert("RGBA"), "PNG"))
    add("grey + alpha PNG", "la.png", {KEPT}, _bytes(_photo().convert("LA"), "PNG"))
    add("1-bit PNG", "bilevel.png", {KEPT}, _bytes(_photo().convert("1"), "PNG"))
    add("1x1 image", "one_pixel.png", {KEPT}, _bytes(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"))
    add("1x3000 sliver", "sliver.png", {KEPT}, _bytes(Image.new("RGB", (1, 3000), (9, 90, 9)), "PNG"))
    add("lossless WebP with alpha", "alpha.webp", {KEPT}, _bytes(_photo().convert("RGBA"), "WEBP", lossless=True))

    def portrait(meta):  # the EXIF orientation is applied: 64x32 as stored, 32x64 as seen
        return meta.get("out_width", 0) < meta.get("out_height", 0)

    add("EXIF-rotated JPEG", "exif_rotated.jpg", {KEPT}, _exif_rotated_jpeg(), check=portrait)
    add("animated GIF", "animated.gif", {KEPT}, _animated_gif())
    add("non-UTF-8 file name", b"caf\xe9.jpg", {FAILED}, jpeg)
    add("name with spaces and unicode", "my photo — ü 写真.jpg", {KEPT}, jpeg)
    (elsewhere / "target.jpg").write_bytes(jpeg)
    (img / "link.jpg").symlink_to(elsewhere / "target.jpg")
    add("symlink to a file", "link.jpg", {KEPT})
    (img / "loop.jpg").symlink_to(img / "loop.jpg")
    add("symlink loop", "loop.jpg", {ABSENT})
    (img / "dangling.jpg").symlink_to(elsewhere / "gone.jpg")
    add("dangling symlink", "dangling.jpg", {ABSENT})
    add("hidden dotfile", ".hidden.jpg", {ABSENT}, jpeg)
    (img / "folder.jpg").mkdir()
    add("folder named like a file", "folder.jpg", {ABSENT})
    add("image inside that folder", "folder.jpg/inside.png", {KEPT}, png)

    # -- videos
    make_clip(vid / "good.mp4", size=64, frames=24)
    good = (vid / "good.mp4").read_bytes()
    add("plain H.264 clip (control)", "good.mp4", {KEPT}, folder=vid)
    add("truncated MP4 (faststart)", "truncated.mp4", {KEPT, FAILED, DROPPED}, good[: len(good) * 6 // 10], folder=vid)
    make_clip(vid / "no_faststart.mkv", size=64, frames=24)  # scratch: re-muxed below without its index
    with av.open(str(vid / "no_faststart.mkv")) as src, av.open(str(root / "tail.mp4"), "w") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    (vid / "no_faststart.mkv").unlink()
    tail = (root / "tail.mp4").read_bytes()  # moov at the end: cut before it
    add("MP4 with its moov atom missing", "no_moov.mp4", {FAILED}, tail[: tail.rindex(b"moov") - 4], folder=vid)
    add("zero-byte .mp4", "empty.mp4", {FAILED}, b"", folder=vid)
    add("random bytes .mp4", "random.mp4", {FAILED}, np.random.default_rng(3).bytes(8192), folder=vid)
    add("JPEG named .mp4", "photo.mp4", {FAILED, DROPPED}, jpeg, folder=vid)
    _write_video(vid / "tiny_16x16.mp4", "libx264", (16, 16), 24)
    add("16x16 video", "tiny_16x16.mp4", {KEPT, DROPPED}, folder=vid)
    _write_video(vid / "two_frames.mp4", "libx264", (64, 64), 2)
    add("2-frame video", "two_frames.mp4", {DROPPED, FAILED}, folder=vid)
    _audio_only(vid / "audio_only.mp4")
    add("audio-only MP4", "audio_only.mp4", {FAILED, DROPPED}, folder=vid)
    _audio_only(vid / "audio.m4a", fmt="mp4")
    add("audio-only .m4a", "audio.m4a", {ABSENT}, folder=vid)
    _write_video(vid / "hevc10.mp4", "libx265", (64, 64), 24, "yuv420p10le")
    add("HEVC 10-bit clip", "hevc10.mp4", {KEPT}, folder=vid)
    _write_video(vid / "odd_99x77.mkv", "libx264", (99, 77), 24, "yuv444p")
    add("odd-size 99x77 video", "odd_99x77.mkv", {KEPT}, folder=vid)
    vfr = np.cumsum([0] + [30 if i % 3 else 80 for i in range(23)]).tolist()
    _write_video(vid / "vfr.mkv", "libx264", (64, 64), 24, pts=vfr)
    add("VFR video", "vfr.mkv", {KEPT}, folder=vid)
    add("hidden dotfile .mp4", ".hidden.mp4", {ABSENT}, good, folder=vid)

    # -- OCR pages
    page = _bytes(Image.new("RGB", (160, 64), "white"), "PNG")
    add("OCR page with transcript", "page.png", {KEPT}, page, folder=ocr)
    (ocr / "page.txt").write_text("hello hostile world")
    add("OCR page without transcript", "lonely.png", {FAILED, DROPPED}, page, folder=ocr)
    add("OCR transcript not UTF-8", "latin1.png", {FAILED, DROPPED}, page, folder=ocr)
    (ocr / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    rows = [
        json.dumps({"image": "page.png", "text": "from jsonl"}),
        "{not json",
        json.dumps({"image": "missing.png", "text": "no such page"}),
        json.dumps({"image": 3, "text": "image is not a string"}),
    ]
    (ocr / "rows.jsonl").write_text("\n".join(rows) + "\n")
    add("JSONL row (control)", "rows.jsonl#1", {KEPT}, folder=ocr)
    add("JSONL line that is not JSON", "rows.jsonl#2", {FAILED}, folder=ocr)
    add("JSONL row naming a missing page", "rows.jsonl#3", {FAILED}, folder=ocr)
    add("JSONL row with a non-string image", "rows.jsonl#4", {FAILED}, folder=ocr)
    return cases


def _shown(path: str | bytes) -> str:
    """The name the sources give an input (one that is not UTF-8 shown escaped), from which its key comes."""
    return path.decode("utf-8", "backslashreplace") if isinstance(path, bytes) else path


# ---------------------------------------------------------------------------------------------- runs

MANIFEST = """name = "audit"
partition_size = 16
executor = "local"
stop_after_failing = 0

[output]
dir = "{out}"
set_name = "audit"
version = "v1"

{sources}
[[stages]]
name = "image_decode"
size = {size}

[[stages]]
name = "ocr_text"

[[stages]]
name = "video_probe"

[[stages]]
name = "codec_patchify"
size = 64
frames = 16
min_frames = 8
budget = 0.25
"""


def curate_run(manifest: Path, *extra: str) -> tuple[int, str, str, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "curate", "run", str(manifest), "--quiet", *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    return proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start


def write_manifest(path: Path, root: Path, out: str, size: int = 64, sources=("image", "video", "ocr")) -> Path:
    folders = {"image": "images", "video": "videos", "ocr": "ocr"}
    tables = "".join(f'[[sources]]\nmodality = "{m}"\nuri = "{root}/{folders[m]}"\n\n' for m in sources)
    path.write_text(MANIFEST.format(sources=tables, out=out, size=size))
    return path


def coarse(reason: str) -> bool:
    """A reason whose last part is an exception class name (``image_decode/ValueError``), not a code."""
    return bool(re.fullmatch(r"[\w.-]+/[A-Z]\w*", reason or ""))


def _text(value) -> str:
    """A ledger cell as text ('' for a missing value, which pandas reads as NaN)."""
    return value if isinstance(value, str) else ""


def judge_inputs(cases: list[dict], ledger, crashed: bool) -> list[dict]:
    by_key = {}
    for row in ledger.to_dict("records"):
        if not _text(row.get("parent")):
            by_key.setdefault(row["key"], []).append(row)
    results = []
    for case in cases:
        rows = by_key.get(case["key"], [])
        got, verdict = "absent", "ok"
        if len(rows) == 1:
            row = rows[0]
            reason, detail = _text(row.get("reason")), _text(row.get("detail")).strip()
            got = row["status"] + (f": {reason}" if reason else "")
            if row["status"] == FAILED and detail:
                got += f" ({detail.splitlines()[0][:90]})"
            if row["status"] not in case["expect"]:
                verdict = "UNEXPECTED"
            elif row["status"] != KEPT and (not reason or coarse(reason)):
                verdict = "coarse"
            elif row["status"] == FAILED and not detail:
                verdict = "coarse"
            elif case["check"] and not case["check"](json.loads(_text(row.get("meta")) or "{}")):
                verdict = "UNEXPECTED"
                got += " (fails its ground-truth check)"
        elif len(rows) > 1:
            got, verdict = f"{len(rows)} rows", "LOST"
        elif ABSENT not in case["expect"]:
            verdict = "LOST"
        if crashed:
            verdict = "CRASH"
        expect = "/".join(sorted(case["expect"]))
        results.append({"case": case["case"], "expect": expect, "got": got, "verdict": verdict, "rows": len(rows)})
    return results


def run_level_cases(root: Path, tmp: Path) -> list[dict]:
    """Each a run of its own that must end with exit 0, or with one ``error:`` line and no traceback."""
    blocker = tmp / "a_file"
    blocker.write_text("not a folder")
    cases = [
        ("output folder where writes are refused (/sys)", write_manifest(tmp / "ro.toml", root, "/sys/audit-out"), 1),
        ("output folder under a file", write_manifest(tmp / "unmakeable.toml", root, f"{blocker}/out"), 1),
        ("source path that does not exist", write_manifest(tmp / "nosrc.toml", tmp / "nowhere", str(tmp / "o1")), 1),
        ("manifest with size = 0", write_manifest(tmp / "size0.toml", root, str(tmp / "o2"), size=0), 1),
        # twice: the second run lists the folder the first one wrote inside its source
        (
            "output inside the input, --force, twice",
            write_manifest(tmp / "in.toml", root, f"{root}/images/out", sources=("image",)),
            2,
        ),
    ]
    results = []
    for name, manifest, times in cases:
        for _ in range(times):
            rc, out, err, _ = curate_run(manifest, "--force")
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        traceback = "Traceback" in err
        if rc == 0 and not traceback:
            verdict, got = "ok", "exit 0: " + (out.strip().splitlines() or [""])[-1]
        elif rc != 0 and len(errors) == 1 and not traceback:
            verdict, got = "ok", f"exit {rc}: {errors[0][:150]}"
        else:
            verdict, got = "CRASH", f"exit {rc}: " + " | ".join(err.strip().splitlines()[-2:])[:150]
        results.append({"case": name, "expect": "exit 0 / one error", "got": got, "verdict": verdict})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", help="build the corpus and outputs in this folder and keep them")
    args = parser.parse_args(argv)
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="audit-hostile-"))
    tmp.mkdir(parents=True, exist_ok=True)
    root = tmp / "corpus"
    if root.exists():
        shutil.rmtree(root)
    try:
        start = time.perf_counter()
        cases = build_corpus(root)
        made = time.perf_counter() - start
        rc, out, err, seconds = curate_run(write_manifest(tmp / "audit.toml", root, str(tmp / "out")), "--force")
        crashed = rc != 0 or "Traceback" in err
        ledger = read_ledger(str(tmp / "out")) if not crashed else None
        summary = json.loads((tmp / "out" / "summary.json").read_text()) if not crashed else {}
        if crashed:
            print(f"the run CRASHED (exit {rc}):\n{err[-3000:]}")
        inputs = (
            judge_inputs(cases, ledger, crashed)
            if not crashed
            else [{"case": c["case"], "expect": "", "got": "", "verdict": "CRASH"} for c in cases]
        )
        runs = run_level_cases(root, tmp)
        rows = inputs + runs
        width = max(len(r["case"]) for r in rows)
        print(f"{'case':<{width}}  {'expected':<22}  {'verdict':<10}  got")
        for r in rows:
            got = r["got"].replace(str(tmp), "TMP")
            print(f"{r['case']:<{width}}  {r['expect']:<22}  {r['verdict']:<10}  {got}")
        verdicts = [r["verdict"] for r in rows]
        listed = [r for r, c in zip(inputs, cases, strict=True) if ABSENT not in c["expect"]]
        top = 0 if ledger is None else int((ledger["parent"].fillna("") == "").sum())
        print()
        print(f"cases tried                 {len(rows)} ({len(inputs)} files in one run, {len(runs)} run-level runs)")
        print(
            f"runs that kept going        {(not crashed) + sum(r['verdict'] == 'ok' for r in runs)} of {1 + len(runs)}"
        )
        print(
            f"inputs accounted            {sum(r.get('rows') == 1 for r in listed)}"
            f" of {len(listed)} once in the ledger (ledger input rows {top}, summary inputs {summary.get('inputs')}),"
            f" {len(inputs) - len(listed)} files not inputs by design absent from it"
        )
        print(f"passed over (summary)       {summary.get('files_passed_over_by_extension')}")
        for verdict in ("ok", "coarse", "UNEXPECTED", "LOST", "CRASH"):
            print(f"{verdict:<28}{verdicts.count(verdict)}")
        print(f"corpus made in {made:.1f} s, main run {seconds:.1f} s wall")
        print(f"machine: {machine()}")
        return 0 if not {"LOST", "CRASH"} & set(verdicts) else 1
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
