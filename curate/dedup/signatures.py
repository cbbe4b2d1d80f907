"""Signatures: exact digests, perceptual bit hashes of images and sampled video frames, MinHash.

MinHash is datasketch's default scheme (``affine32``: SHA-1 → 32 bits, MurmurHash3 ``fmix32``,
``a*h + b mod 2**32`` with odd ``a``) computed for a whole batch in one compiled loop (numba), so
sketches are bit-identical to ``datasketch.MinHash(num_perm, seed)`` and can be mixed with it; what
remains is one SHA-1 per shingle, which the ``words`` hashing replaces by a compiled word hash.
Perceptual hashes follow the usual definitions (pHash: sign of the low 8x8 DCT block against its
median; dHash: horizontal gradient signs); PIL does the decode (JPEG draft mode: DCT-domain
downscale) and the resize, scipy the DCT, batched.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
from datasketch import MinHash
from numba import njit
from PIL import Image
from scipy.fft import dctn

from curate.media import open_video

_WORD = re.compile(r"\w+", re.UNICODE)
_M32 = np.uint64(0xFFFFFFFF)
_ASCII_WORDS = bytes(ord(c.lower()) if _WORD.fullmatch(c) else 32 for c in map(chr, range(256)))


# ---------------------------------------------------------------------------------------- MinHash


def shingles(text: str, n: int = 3) -> list[bytes]:
    """Distinct lower-cased word ``n``-grams (a shorter text is one shingle of all its words)."""
    words = _WORD.findall(text.lower())
    if not words:
        return []
    grams = {" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}
    return [g.encode("utf-8") for g in sorted(grams)]


def permutations(num_perm: int = 128, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's permutation parameters ``(a, b)`` for this seed (taken from datasketch itself)."""
    a, b = MinHash(num_perm=num_perm, seed=seed).permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def sha1_32(items: list[bytes]) -> np.ndarray:
    """datasketch's ``sha1_hash32`` for many items: the first 4 SHA-1 bytes, little-endian."""
    digests = b"".join(hashlib.sha1(s).digest()[:4] for s in items)
    return np.frombuffer(digests, dtype="<u4").astype(np.uint32)


@njit(cache=True, inline="always")
def _fmix32(h):  # pragma: no cover - compiled; MurmurHash3's finaliser, as datasketch's affine32 applies it
    h = np.uint64(h)
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & _M32
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & _M32
    return h ^ (h >> np.uint64(16))


@njit(cache=True, nogil=True)
def _minhash_runs(hv, counts, a, b, out):  # pragma: no cover - compiled
    """datasketch's affine32 over per-document runs of 32-bit hashes: min over h of (a * fmix32(h) + b) mod 2**32."""
    start = 0
    for d in range(len(counts)):
        row = out[d]
        for s in range(start, start + counts[d]):
            h = _fmix32(hv[s])
            for p in range(len(a)):
                row[p] = min(row[p], np.uint32((a[p] * h + b[p]) & _M32))
        start += counts[d]
    return out


def minhash_batch(texts: list[str], num_perm: int = 128, seed: int = 1, n: int = 3, hashing: str = "sha1"):
    """MinHash signatures (``len(texts) x num_perm`` uint32) and a mask of texts that had any words.

    ``hashing="sha1"`` equals ``datasketch.MinHash`` with its default hash over :func:`shingles`;
    ``"words"`` hashes words and shingles in one compiled pass over the batch's text (FNV-1a per
    word, an order-sensitive chain per shingle), equal to ``datasketch.MinHash(hashfunc=
    word_shingle_hash32)`` over the same shingles (33x ``MinHash.bulk`` in RESULTS.md).
    """
    if hashing == "words":
        hv, counts = word_shingle_hashes(texts, n)
        return _minhash(hv, counts, num_perm, seed)
    if hashing != "sha1":
        raise ValueError(f"hashing must be 'sha1' or 'words', got {hashing!r}")
    return minhash_shingles([shingles(t, n) for t in texts], num_perm, seed)


def minhash_shingles(grams: list[list[bytes]], num_perm: int = 128, seed: int = 1):
    """MinHash of pre-shingled documents with datasketch's default SHA-1 hash."""
    counts = np.array([len(g) for g in grams], dtype=np.int64)
    return _minhash(sha1_32([s for g in grams for s in g]), counts, num_perm, seed)


@njit(cache=True, nogil=True)
def _word_shingles(text, n):  # pragma: no cover - compiled
    """Shingle hashes of NUL-separated documents of space-separated words, and per-document counts.

    Word: 64-bit FNV-1a of its bytes, folded to 32 bits. Shingle: ``n`` consecutive words chained
    in order; a document of 1..n-1 words is one shingle of all of them.
    """
    docs = 1
    for c in text:
        docs += c == 0
    hv = np.empty(len(text) // 2 + 1, np.uint32)
    counts = np.zeros(docs, np.int64)
    words = np.empty(len(text) // 2 + 1, np.uint64)
    out, doc, m, i = 0, 0, 0, 0
    while i <= len(text):
        if i == len(text) or text[i] == 0:  # end of a document: its shingles
            full = max(m - n + 1, 1) if m else 0
            for s in range(full):
                h = np.uint64(0x9E3779B9)
                for j in range(s, min(s + n, m)):
                    h = (_fmix32(h ^ words[j]) * np.uint64(0x9E3779B1)) & _M32
                hv[out] = h
                out += 1
            counts[doc] = full
            doc, m, i = doc + 1, 0, i + 1
        elif text[i] == 32:
            i += 1
        else:
            h = np.uint64(0xCBF29CE484222325)
            while i < len(text) and text[i] != 32 and text[i] != 0:
                h = (h ^ np.uint64(text[i])) * np.uint64(0x100000001B3)
                i += 1
            words[m] = (h ^ (h >> np.uint64(32))) & _M32
            m += 1
    return hv[:out], counts


def _word_text(texts: list[str]) -> np.ndarray:
    """Each text's lower-cased ``\\w+`` words joined by spaces, texts joined by NUL, as bytes.

    ASCII texts take two C passes (``bytes.translate`` maps word characters to lower case and every
    other byte to a space); other texts go through the regular expression of :func:`shingles`.
    """
    parts = (
        t.encode("ascii").translate(_ASCII_WORDS) if t.isascii() else " ".join(_WORD.findall(t.lower())).encode()
        for t in texts
    )
    return np.frombuffer(b"\0".join(parts), np.uint8)


def word_shingle_hash32(shingle: bytes) -> int:
    """The ``words`` hashing as a datasketch ``hashfunc`` for one space-joined shingle."""
    hv, _ = _word_shingles(np.frombuffer(shingle, np.uint8), len(shingle.split(b" ")))
    return int(hv[0])


def word_shingle_hashes(texts: list[str], n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes of every text (concatenated) and per-text counts, in one compiled pass."""
    if not texts:
        return np.zeros(0, np.uint32), np.zeros(0, np.int64)
    return _word_shingles(_word_text(texts), n)


def _minhash(hv: np.ndarray, counts: np.ndarray, num_perm: int, seed: int):
    """datasketch's affine32 MinHash over per-document runs of 32-bit hashes.

    Documents without shingles stay at the empty sentinel (all ones) and are masked out: they are
    not duplicates of each other, just empty.
    """
    a, b = permutations(num_perm, seed)
    out = np.full((len(counts), num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    _minhash_runs(hv.astype(np.uint32), counts.astype(np.int64), a.astype(np.uint64), b.astype(np.uint64), out)
    return out, counts > 0


# ------------------------------------------------------------------------------- images, frames


def image_bits(grays: list[Image.Image]) -> np.ndarray:
    """128 bits per image, pHash (64) then dHash (64), as ``(n, 128)`` bool.

    One PIL resize per image (to 32x32, box filter); dHash's 9x8 grid is box-averaged from that
    32x32 by two small matrices for the whole batch, which costs less than a second PIL call.
    """
    if not grays:
        return np.zeros((0, 128), dtype=bool)
    big = np.empty((len(grays), 32, 32), dtype=np.float64)
    for i, g in enumerate(grays):
        big[i] = np.asarray(g.resize((32, 32), Image.Resampling.BOX))
    small = np.round(_BOX_ROWS @ big @ _BOX_COLS.T, 6)  # (n, 8, 9); rounding keeps flat images flat
    return np.concatenate([phash_bits(big, 8), (small[:, :, 1:] > small[:, :, :-1]).reshape(len(grays), -1)], 1)


def box_weights(n_out: int, n_in: int) -> np.ndarray:
    """``(n_out, n_in)`` area-averaging matrix: output cell ``i`` is the mean over ``[i, i + 1) * n_in / n_out``."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    cells = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, cells + 1) - np.maximum(lo, cells), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


_BOX_ROWS, _BOX_COLS = box_weights(8, 32), box_weights(9, 32)


def phash_bits(pixels: np.ndarray, n: int) -> np.ndarray:
    """pHash of ``(batch, 2n..4n, 2n..4n)`` grayscale arrays: the low ``n x n`` DCT block above its median."""
    low = dctn(pixels, type=2, axes=(1, 2))[:, :n, :n].reshape(len(pixels), -1)
    return low > np.median(low, axis=1, keepdims=True)


def pixel_digest(img: Image.Image) -> str:
    """SHA-256 of the RGB pixels at a canonical 64x64 (box filter): equal pixels, any container."""
    return hashlib.sha256(img.convert("RGB").resize((64, 64), Image.Resampling.BOX).tobytes()).hexdigest()


VIDEO_MAGIC = b"VT16"  # video signature layout: magic, fps (f32), n (u32), ticks (n x u32), thumbnails (n x 16 x 16 u8)
THUMB = 16


def video_signature(
    data: bytes | str,
    uri: str,
    fps: float = 8.0,
    max_frames: int = 256,
    keyframes_only: bool = False,
    start: float = 0.0,
    end: float | None = None,
):
    """16x16 gray thumbnails of frames on a ``1/fps`` grid of the clip's clock, their grid ticks, the
    grid's fps and the duration. ``data``: the video's bytes, or a local path or ``s3://`` URI (streamed).

    Tick ``k`` takes the frame whose presentation time (from the first frame) is nearest ``k / fps``,
    never one frame twice, so a re-encode, a copy at another frame rate and a clip cut out of a longer
    one all land on the same content at the same tick spacing: the verifier aligns clips by tick
    offset. A clip longer than ``max_frames / fps`` seconds gets a sparser grid so the samples still
    span all of it. ``keyframes_only`` decodes intra frames alone (the cheap, compressed-domain mode).
    ``start`` / ``end`` (seconds from the first frame) restrict it to one clip of the video, whose
    ticks then count from ``start``: a clip and the same shot uploaded alone sign alike.
    Thumbnails are box means of a 64x64 gray frame: blur, block artefacts and downscaling barely move
    them, and the verifier compares them by correlation (``grouping.video_distance``).
    """
    ticks, grays, pending, last, t0, first = [], [], None, 0.0, None, None

    def settle():  # the pending tick's frame is final: keep its 64x64 gray (never hold full frames)
        ticks.append(pending[0])
        grays.append(pending[2].reformat(width=64, height=64, format="gray", threads=1).to_ndarray())

    with open_video(data, uri) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1  # a pipeline task owns one core: FFmpeg's own threads only add CPU time
        declared = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0
        if end is not None:
            declared = max(0.0, end - start) + 1.0 / fps
        fps = min(fps, max_frames / declared) if declared else fps
        if keyframes_only:
            stream.codec_context.skip_frame = "NONKEY"
        for n, frame in enumerate(container.decode(stream)):
            t = float(frame.time) if frame.time is not None else n / fps
            first = t if first is None else first
            if t - first < start - 0.5 / fps:
                continue
            if end is not None and t - first > end + 0.5 / fps:
                break
            t0 = first + start if t0 is None else t0
            last = max(last, t)
            tick = round((t - t0) * fps)
            error = abs((t - t0) * fps - tick)
            if pending is not None and tick > pending[0]:
                settle()
                pending = None
                if len(ticks) >= max_frames:
                    break
            if (pending is None and (not ticks or tick > ticks[-1])) or (
                pending and tick == pending[0] and error < pending[1]
            ):
                pending = (tick, error, frame)
        if pending is not None:
            settle()
        rate = stream.average_rate
        if declared:  # the container's word, else the frames seen
            duration = declared
        elif container.duration:
            duration = container.duration / 1_000_000
        else:
            duration = last + (1.0 / float(rate) if rate else 0.0)
    if not grays:
        raise ValueError(f"{uri}: no decodable frame for the video signature")
    big = np.stack(grays).astype(np.float64).reshape(len(grays), THUMB, 64 // THUMB, THUMB, 64 // THUMB)
    return np.round(big.mean((2, 4))).astype(np.uint8), np.array(ticks, dtype=np.uint32), float(fps), duration


def pack_video(thumbs: np.ndarray, ticks: np.ndarray, fps: float) -> bytes:
    head = VIDEO_MAGIC + np.float32(fps).tobytes() + np.uint32(len(ticks)).tobytes()
    return head + ticks.astype("<u4").tobytes() + thumbs.astype(np.uint8).tobytes()


def unpack_video(data: bytes) -> tuple[np.ndarray, np.ndarray, float]:
    """``(thumbs (n, 16, 16) uint8, ticks (n,), fps)`` of a :func:`pack_video` signature."""
    data = bytes(data)
    if data[:4] != VIDEO_MAGIC:
        raise ValueError("video_hashes of an older dedup_signatures (per-frame pHash): rerun dedup_signatures")
    fps = float(np.frombuffer(data, "<f4", 1, 4)[0])
    n = int(np.frombuffer(data, "<u4", 1, 8)[0])
    ticks = np.frombuffer(data, "<u4", n, 12).astype(np.int64)
    return np.frombuffer(data, np.uint8, n * THUMB * THUMB, 12 + 4 * n).reshape(n, THUMB, THUMB), ticks, fps


def thumb_bits(thumbs: np.ndarray) -> np.ndarray:
    """64-bit pHash of 16x16 thumbnails (the low 8x8 DCT block above its median): the band keys."""
    return phash_bits(thumbs.astype(np.float64), 8)


# ------------------------------------------------------------------------------------- packing


def pack(bits: np.ndarray) -> bytes:
    return np.packbits(bits, axis=-1).tobytes()


def unpack(data: bytes, nbits: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8)).reshape(-1, nbits).astype(bool)
