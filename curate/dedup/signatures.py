"""Signatures: exact digests, perceptual bit hashes of images and sampled video frames, MinHash.

MinHash is datasketch's default scheme (``affine32``: SHA-1 → 32 bits, MurmurHash3 ``fmix32``,
``a*h + b mod 2**32`` with odd ``a``) computed for a whole batch at once in numpy, so sketches are
bit-identical to ``datasketch.MinHash(num_perm, seed)`` and can be mixed with it; the per-document
Python loop of ``MinHash.bulk`` is what it removes. Perceptual hashes follow the usual definitions
(pHash: sign of the low 8x8 DCT block against its median; dHash: horizontal gradient signs); PIL does
the decode (JPEG draft mode: DCT-domain downscale) and the resize, scipy the DCT, batched.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
from datasketch import MinHash
from PIL import Image
from scipy.fft import dctn

_WORD = re.compile(r"\w+", re.UNICODE)
_M32 = (np.uint32(0x85EBCA6B), np.uint32(0xC2B2AE35))


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


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * _M32[0]
    h = h ^ (h >> np.uint32(13))
    h = h * _M32[1]
    return h ^ (h >> np.uint32(16))


def minhash_batch(texts: list[str], num_perm: int = 128, seed: int = 1, n: int = 3, hashing: str = "sha1"):
    """MinHash signatures (``len(texts) x num_perm`` uint32) and a mask of texts that had any words.

    ``hashing="sha1"`` equals ``datasketch.MinHash`` with its default hash over :func:`shingles`;
    ``"words"`` hashes each distinct word once and combines word hashes into shingle hashes in
    numpy, equal to ``datasketch.MinHash(hashfunc=word_shingle_hash32)`` over the same shingles.
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


def _chain(words: np.ndarray) -> np.ndarray:
    """Order-sensitive combination of ``(m, k)`` uint32 word hashes into ``m`` shingle hashes."""
    h = np.full(len(words), 0x9E3779B9, dtype=np.uint32)
    for j in range(words.shape[1]):
        h = _fmix32(h ^ words[:, j]) * np.uint32(0x9E3779B1)
    return h


def word_shingle_hash32(shingle: bytes) -> int:
    """The ``words`` hashing as a datasketch ``hashfunc`` for one space-joined shingle."""
    return int(_chain(sha1_32([w.encode() for w in shingle.decode().split(" ")])[None, :])[0])


def word_shingle_hashes(texts: list[str], n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes of every text (concatenated, per-document counts): SHA-1 once per distinct word."""
    cache: dict[str, int] = {}
    ids, lengths = [], []
    for text in texts:
        tokens = _WORD.findall(text.lower())
        lengths.append(len(tokens))
        ids += [cache.setdefault(w, len(cache)) for w in tokens]
    tok = sha1_32([w.encode() for w in cache])[np.array(ids, dtype=np.int64)]
    lengths = np.array(lengths, dtype=np.int64)
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    full = np.maximum(lengths - n + 1, 0)
    pos = np.repeat(starts - np.r_[0, np.cumsum(full)[:-1]], full) + np.arange(full.sum())
    hv = _chain(tok[pos[:, None] + np.arange(n)]) if len(pos) else np.zeros(0, np.uint32)
    doc = np.repeat(np.arange(len(texts)), full)
    short = np.flatnonzero((lengths > 0) & (lengths < n))  # one shingle of all their words
    if len(short):
        extra = np.array([_chain(tok[starts[d] : starts[d] + lengths[d]][None, :])[0] for d in short], np.uint32)
        order = np.argsort(np.r_[doc, short], kind="stable")
        hv, doc = np.r_[hv, extra][order], np.r_[doc, short][order]
    return hv, np.bincount(doc, minlength=len(texts))


def _minhash(hv: np.ndarray, counts: np.ndarray, num_perm: int, seed: int, chunk: int = 1 << 14):
    """datasketch's affine32 MinHash over per-document runs of 32-bit hashes, ``(perm x hash)`` at once.

    Documents without shingles stay at the empty sentinel (all ones) and are masked out: they are
    not duplicates of each other, just empty.
    """
    a, b = permutations(num_perm, seed)
    out = np.full((len(counts), num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    hv = _fmix32(hv.astype(np.uint32))
    docs = np.flatnonzero(counts)
    offsets = np.r_[0, np.cumsum(counts[docs])]
    i = 0
    while i < len(docs):  # chunks of whole documents keep the (num_perm x shingles) temporary near cache size
        j = min(len(docs), max(i + 1, int(np.searchsorted(offsets, offsets[i] + chunk, side="right")) - 1))
        lo, hi = offsets[i], offsets[j]
        phv = np.multiply(a[:, None], hv[None, lo:hi])
        phv += b[:, None]
        out[docs[i:j]] = np.minimum.reduceat(phv, offsets[i:j] - lo, axis=1).T
        i = j
    return out, counts > 0


# ------------------------------------------------------------------------------- images, frames


def image_bits(grays: list[Image.Image]) -> np.ndarray:
    """128 bits per image, pHash (64) then dHash (64), as ``(n, 128)`` bool."""
    if not grays:
        return np.zeros((0, 128), dtype=bool)
    big = np.stack([np.asarray(g.resize((32, 32), Image.Resampling.BOX), dtype=np.float64) for g in grays])
    small = np.stack([np.asarray(g.resize((9, 8), Image.Resampling.BOX), dtype=np.int16) for g in grays])
    return np.concatenate([phash_bits(big, 8), (small[:, :, 1:] > small[:, :, :-1]).reshape(len(grays), -1)], 1)


def phash_bits(pixels: np.ndarray, n: int) -> np.ndarray:
    """pHash of ``(batch, 4n, 4n)`` grayscale arrays: the low ``n x n`` DCT block above its median."""
    low = dctn(pixels, type=2, axes=(1, 2))[:, :n, :n].reshape(len(pixels), -1)
    return low > np.median(low, axis=1, keepdims=True)


def pixel_digest(img: Image.Image) -> str:
    """SHA-256 of the RGB pixels at a canonical 64x64 (box filter): equal pixels, any container."""
    return hashlib.sha256(img.convert("RGB").resize((64, 64), Image.Resampling.BOX).tobytes()).hexdigest()


def video_frame_bits(data: bytes, uri: str, fps: float = 8.0, max_frames: int = 256, keyframes_only: bool = False):
    """256-bit pHash (16x16 DCT block of a 64x64 frame) of frames sampled at ``fps``, and the duration.

    The samples sit on the clip's own clock, so a re-encode lands on the same frames and a trim on
    frames at most half a sampling step away; a clip longer than ``max_frames / fps`` seconds is
    sampled more sparsely so the samples still span all of it. ``keyframes_only`` decodes intra
    frames alone (the cheap, compressed-domain mode: decode cost / GOP length), which suits clips
    with regular GOPs.
    """
    from curate.stages.video import open_video

    grays, last = [], 0.0
    with open_video(data, uri) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        declared = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0
        fps = min(fps, max_frames / declared) if declared else fps
        if keyframes_only:
            stream.codec_context.skip_frame = "NONKEY"
        next_t = None
        for frame in container.decode(stream):
            t = float(frame.time) if frame.time is not None else len(grays) / fps
            last = max(last, t)
            if next_t is None or t + 1e-6 >= next_t or keyframes_only:
                grays.append(frame.reformat(width=64, height=64, format="gray").to_ndarray())
                next_t = t + 1.0 / fps
            if len(grays) >= max_frames:
                break
        rate = stream.average_rate
        if declared:  # the container's word, else the frames seen
            duration = declared
        elif container.duration:
            duration = container.duration / 1_000_000
        else:
            duration = last + (1.0 / float(rate) if rate else 0.0)
    if not grays:
        raise ValueError(f"{uri}: no decodable frame for the video signature")
    return phash_bits(np.stack(grays).astype(np.float64), 16), duration


# ------------------------------------------------------------------------------------- packing


def pack(bits: np.ndarray) -> bytes:
    return np.packbits(bits, axis=-1).tobytes()


def unpack(data: bytes, nbits: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8)).reshape(-1, nbits).astype(bool)
