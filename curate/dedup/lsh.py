"""LSH band keys: rows that share a key in some band become candidate pairs.

MinHash banding uses datasketch's own ``(b, r)`` optimum for a Jaccard threshold and the same band
slices as ``MinHashLSH``; a band is reduced to one 64-bit key (equal bands give equal keys, unequal
ones collide with probability 2**-64), so candidates equal ``MinHashLSH``'s. Bit hashes (pHash,
dHash) use bit-sampling LSH: each band reads ``k`` seeded bit positions, so a pair agreeing on a
fraction ``p`` of bits meets with probability ``1 - (1 - p**k)**b``. Every key is salted with the
signature kind and band index, so one shuffle on one int64 column serves every kind at once.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import pandas as pd

_C1, _C2 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def mix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer, element-wise (wrapping multiply is the intended mod 2**64)."""
    h = h ^ (h >> np.uint64(33))
    h = h * _C1
    h = h ^ (h >> np.uint64(33))
    h = h * _C2
    return h ^ (h >> np.uint64(33))


def salt(*parts: str | int) -> np.uint64:
    """A stable 64-bit salt for a (kind, modality, band) tuple; Python's ``hash`` is per-process."""
    return np.uint64(int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little"))


def _keys(values: np.ndarray, salts: np.ndarray) -> np.ndarray:
    """``(n, bands, r)`` unsigned values -> ``(n, bands)`` int64 keys."""
    with np.errstate(over="ignore"):
        h = np.broadcast_to(salts, values.shape[:2]).astype(np.uint64)
        for j in range(values.shape[2]):
            h = mix64((h ^ values[:, :, j].astype(np.uint64)) * _GOLD)
    return h.view(np.int64)


@functools.lru_cache(maxsize=32)
def minhash_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """datasketch's ``(bands, rows)`` minimising equal-weighted false positive + negative areas."""
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, 0.5, 0.5)


def minhash_bands(sigs: np.ndarray, bands: int, rows: int, tag: str = "minhash") -> np.ndarray:
    """Band keys of ``(n, num_perm)`` signatures: band ``i`` is ``sig[:, i*rows:(i+1)*rows]``."""
    salts = np.array([salt(tag, i) for i in range(bands)], dtype=np.uint64)
    return _keys(sigs[:, : bands * rows].reshape(len(sigs), bands, rows), salts)


@functools.lru_cache(maxsize=32)
def bit_positions(nbits: int, bands: int, bits_per_band: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(nbits, size=bits_per_band, replace=False) for _ in range(bands)])


def bit_bands(bits: np.ndarray, bands: int, bits_per_band: int, tag: str, seed: int = 0) -> np.ndarray:
    """Bit-sampling band keys of ``(n, nbits)`` bool hashes (``bits_per_band`` <= 64)."""
    pos = bit_positions(bits.shape[1], bands, bits_per_band, seed)
    weights = np.uint64(1) << np.arange(bits_per_band, dtype=np.uint64)
    packed = (bits[:, pos].astype(np.uint64) * weights).sum(axis=2, dtype=np.uint64)
    salts = np.array([salt(tag, i) for i in range(bands)], dtype=np.uint64)
    return _keys(packed[:, :, None], salts)


def digest_key(hex_digest: str, tag: str) -> int:
    """One band for exact digests: the digest's first 8 bytes, salted."""
    value = np.array([[[int(hex_digest[:16], 16)]]], dtype=np.uint64)
    return int(_keys(value, np.array([salt(tag, 0)], dtype=np.uint64))[0, 0])


def candidate_probability(p: float, bands: int, bits_per_band: int) -> float:
    """Chance that a pair agreeing on a fraction ``p`` of bits shares at least one band."""
    return 1.0 - (1.0 - p**bits_per_band) ** bands


def candidate_pairs(ids: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Pairs ``(i, j)``, ``i < j``, of ``ids`` that share a key in some band (``keys``: ``(n, bands)``).

    Vectorised single-process candidate generation (the Ray path shuffles instead): singleton keys
    are dropped at once, the rest self-joined per key.
    """
    frame = pd.DataFrame({"id": np.repeat(ids, keys.shape[1]), "key": keys.ravel()})
    frame = frame[frame["key"].duplicated(keep=False)]
    pairs = frame.merge(frame, on="key")
    pairs = pairs[pairs["id_x"] < pairs["id_y"]][["id_x", "id_y"]].drop_duplicates()
    return pairs.to_numpy()
