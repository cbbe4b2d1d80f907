"""Grouping: band records -> shuffle by band key -> verified edges -> components -> group table.

On Ray every row becomes one record per (kind, band key); a hash shuffle on the band key
(``groupby`` on ``bucket mod partitions``, then ``map_groups`` per partition) brings the rows sharing
a key onto one worker, which drops singleton keys in one vectorised step, verifies the candidate
pairs of the rest against the real signatures (Hamming distance, MinHash Jaccard estimate, frame
overlap) and emits only a spanning forest of the verified pairs (O(duplicate members), never O(rows)).
Connected components and the keep choice (``keep.group_table``) run over those edges in one Ray task
(``stages.dedup``): the driver holds references to the edge blocks, never their rows. Tests check it
against an all-pairs oracle (``tests/curate/dedup_oracle.py``).
In one process (the local executor, no Ray) :func:`local_edges` runs the same records and
per-bucket verification over one table, all buckets in one partition.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Annotated, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from curate.cluster import shuffle_partitions, worker_env
from curate.dedup import lsh
from curate.dedup.keep import rank
from curate.dedup.signatures import thumb_bits, unpack, unpack_video
from manifests import Fraction, NonNegativeInt, PositiveInt, Range

KINDS = ("exact", "pixel", "perceptual", "video", "minhash", "semantic")
# large_binary: a shuffle partition's signatures can pass 2 GiB, binary's 32-bit offsets cannot
RECORD = pa.schema(
    [
        ("bucket", pa.int64()),
        ("kind", pa.string()),
        ("key", pa.string()),
        ("sig", pa.large_binary()),
        ("r1", pa.float64()),
        ("r2", pa.float64()),
        ("uri", pa.string()),
    ]
)
EDGE = pa.schema(
    [
        ("a", pa.string()),
        ("b", pa.string()),
        ("kind", pa.string()),
        ("sim", pa.float64()),
        ("a_r1", pa.float64()),
        ("a_r2", pa.float64()),
        ("a_uri", pa.string()),
        ("b_r1", pa.float64()),
        ("b_r2", pa.float64()),
        ("b_uri", pa.string()),
    ]
)


@dataclasses.dataclass(frozen=True)
class DedupConfig:
    """Thresholds of every kind; the defaults separate the demo corpus's families from its distinct inputs.

    Bit-sampling LSH meets a pair agreeing on a fraction p of bits with 1 - (1 - p**k)**b
    (``lsh.candidate_probability``). Perceptual defaults (b=64, k=12): p=0.79 (27 of 128 bits off,
    the demo's worst crop) 0.98, p=0.75 (the threshold) 0.87, unrelated images (p~0.5) 1.6 %: fine
    to ~1e6 images per modality; beyond, raise ``perceptual_band_bits`` (16: 0.5 -> 0.05 %) and
    accept that 5 % crops then often escape. Video (b=8, k=24 of the 64-bit pHash of each sampled
    frame's 16x16 thumbnail): a frame pair 6 bits apart (the 7 kB carphone's blur) meets with 0.54,
    and a clip pair has many frame pairs; the verifier then aligns the clips in time
    (:func:`video_distance`).
    """

    kinds: tuple[str, ...] = ("exact", "pixel", "perceptual", "video", "minhash")
    keep: Literal["resolution", "longest", "first"] = "resolution"
    perceptual_max_bits: Annotated[int, Range(0, 128)] = 32  # of 128 (pHash 64 + dHash 64)
    perceptual_bands: PositiveInt = 64
    perceptual_band_bits: Annotated[int, Range(1, 128)] = 12
    video_max_distance: Annotated[float, Range(0.0, 2.0)] = 0.01  # median 1 - correlation of time-aligned thumbnails
    video_min_overlap: Fraction = 0.5  # fraction of the shorter clip's samples the alignment must cover
    video_bands: PositiveInt = 8
    video_band_bits: PositiveInt = 24
    # a copy cropped by up to ``video_crops``' largest share a side, then scaled: its thumbnails match
    # the original's centre (within video_crop_max_distance) and its motion matches too, which the demo's
    # distinct clips sharing a background photo do not (RESULTS.md: video near-duplicates)
    video_crops: tuple[float, ...] = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06)
    video_crop_max_distance: Annotated[float, Range(0.0, 2.0)] = 0.06
    # median 1 - correlation of frame-to-frame thumbnail changes
    video_max_motion_distance: Annotated[float, Range(0.0, 2.0)] = 0.38
    minhash_threshold: Annotated[float, Range(hi=1.0, above=0.0)] = (
        0.7  # Jaccard estimate; (b, r) from datasketch's optimum for it
    )
    semantic_column: str = "embedding"
    semantic_eps: Annotated[float, Range(0.0, 2.0)] = 0.05  # pairs with cosine >= 1 - eps are duplicates
    semantic_clusters: PositiveInt = 64
    kmeans_sample: PositiveInt = 100_000
    max_bucket: PositiveInt = 256  # larger buckets are verified against their first member and neighbours
    # hash partitions of the band shuffle; 0: sized from the row count (``partitions_for``)
    shuffle_partitions: NonNegativeInt = 0
    seed: NonNegativeInt = 0

    def __post_init__(self):
        bad = sorted(set(self.kinds) - set(KINDS))
        if bad:
            raise ValueError(f"unknown dedup kinds {bad}; valid: {', '.join(KINDS)}")


# ---------------------------------------------------------------------------------- band records


def _rows(batch) -> list[dict]:
    frame = batch if isinstance(batch, pd.DataFrame) else pd.DataFrame(dict(batch))
    rows = frame.to_dict("records")
    for row in rows:
        meta = row.get("meta")
        row["meta"] = json.loads(meta) if isinstance(meta, str | bytes) else dict(meta or {})
    return rows


def band_records(batch, cfg: DedupConfig) -> pa.Table:
    """One record per (row, kind, band key) with the signature the verifier needs."""
    out = {name: [] for name in RECORD.names}

    def emit(row, kind, buckets, sig):
        r1, r2 = rank(row["meta"], cfg.keep)
        for bucket in dict.fromkeys(int(b) for b in buckets):
            for name, value in zip(RECORD.names, (bucket, kind, row["key"], sig, r1, r2, row["uri"]), strict=True):
                out[name].append(value)

    for row in _rows(batch):
        sigs, modality = row["meta"].get("dedup") or {}, row["modality"]
        for kind, field in (("exact", "blake3"), ("pixel", "pixel")):
            value = sigs.get(field) or (row["meta"].get("source_blake3") if kind == "exact" else None)
            if value and kind == "exact" and row["meta"].get("clip") is not None:
                value = f"{value}:clip{row['meta']['clip']}"  # clips of one file are not copies of each other
            if kind in cfg.kinds and value:
                emit(row, kind, [lsh.digest_key(value, f"{kind}/{modality}")], value.encode())
        if "perceptual" in cfg.kinds and sigs.get("phash"):
            sig = bytes.fromhex(sigs["phash"] + sigs["dhash"])
            keys = lsh.bit_bands(
                unpack(sig, 128), cfg.perceptual_bands, cfg.perceptual_band_bits, f"p/{modality}", cfg.seed
            )
            emit(row, "perceptual", keys.ravel(), sig)
        if "video" in cfg.kinds and row.get("video_hashes"):
            frames = thumb_bits(unpack_video(row["video_hashes"])[0])
            keys = lsh.bit_bands(frames, cfg.video_bands, cfg.video_band_bits, f"vt16/{modality}", cfg.seed)
            emit(row, "video", keys.ravel(), bytes(row["video_hashes"]))
        if "minhash" in cfg.kinds and row.get("minhash"):
            sig = np.frombuffer(bytes(row["minhash"]), dtype="<u4")[None, :]
            bands, rows = lsh.minhash_params(cfg.minhash_threshold, len(sig[0]))
            emit(
                row,
                "minhash",
                lsh.minhash_bands(sig, bands, rows, f"m/{modality}/{sigs.get('minhash')}").ravel(),
                bytes(row["minhash"]),
            )
    return pa.table(out, schema=RECORD)


# ---------------------------------------------------------------------------------- verification


def similarity(kind: str, sigs: list[bytes], cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """All-pairs ``(sim, ok)`` matrices for one kind's signatures."""
    n = len(sigs)
    if kind in ("exact", "pixel"):
        codes = pd.factorize(pd.Series(sigs))[0]
        same = codes[:, None] == codes[None, :]
        return same.astype(float), same
    if kind == "perceptual":
        bits = np.stack([unpack(s, 128)[0] for s in sigs])
        dist = (bits[:, None, :] != bits[None, :, :]).sum(-1)
        return 1.0 - dist / 128.0, dist <= cfg.perceptual_max_bits
    if kind == "minhash":
        values = np.stack([np.frombuffer(s, dtype="<u4") for s in sigs])
        jac = (values[:, None, :] == values[None, :, :]).mean(-1)
        return jac, jac >= cfg.minhash_threshold
    if kind == "video":
        clips = [unpack_video(s) for s in sigs]
        sim, ok = np.eye(n), np.eye(n, dtype=bool)
        for i, j in itertools.combinations(range(n), 2):
            d, same = video_match(clips[i], clips[j], cfg)
            sim[i, j] = sim[j, i] = 1.0 - d
            ok[i, j] = ok[j, i] = same
        return sim, ok
    raise ValueError(f"no verifier for kind {kind!r}")


def _unit(thumbs: np.ndarray) -> np.ndarray:
    """Thumbnails as zero-mean unit vectors (a flat frame stays near zero: it correlates with nothing)."""
    x = thumbs.reshape(len(thumbs), -1).astype(np.float64)
    x -= x.mean(axis=1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 16.0)


def video_match(a, b, cfg: DedupConfig) -> tuple[float, bool]:
    """Distance of two clips ``(thumbs, ticks, fps)`` and whether they are copies: time-aligned
    thumbnails within ``video_max_distance``, or, for a copy cropped by a few percent (which moves a
    16x16 thumbnail as far as the demo's distinct clips on one background are apart), one clip's
    centre within ``video_crop_max_distance`` of the other and the same motion."""
    d = video_distance(a, b, cfg.video_min_overlap)
    if d <= cfg.video_max_distance or d > 4 * cfg.video_crop_max_distance:
        return d, d <= cfg.video_max_distance
    crop = min(
        video_distance(*pair, cfg.video_min_overlap)
        for c in cfg.video_crops
        for pair in (((_centre(a[0], c), *a[1:]), b), (a, (_centre(b[0], c), *b[1:])))
    )
    if min(d, crop) > cfg.video_crop_max_distance:
        return min(d, crop), False
    motion = video_distance(*(_changes(c) for c in (a, b)), cfg.video_min_overlap)
    return min(d, crop), motion <= cfg.video_max_motion_distance


def _centre(thumbs: np.ndarray, crop: float) -> np.ndarray:
    """The thumbnails' centre, ``crop`` of each side cut off, resampled to their size (bilinear)."""
    n = thumbs.shape[1]
    x = np.clip(crop * n + (np.arange(n) + 0.5) * (1 - 2 * crop) - 0.5, 0, n - 1)
    lo = np.floor(x).astype(int)
    hi, w = np.minimum(lo + 1, n - 1), x - lo
    t = thumbs.astype(np.float64)
    t = t[:, lo, :] * (1 - w)[None, :, None] + t[:, hi, :] * w[None, :, None]
    return t[:, :, lo] * (1 - w) + t[:, :, hi] * w


def _changes(clip):
    """A clip's frame-to-frame thumbnail differences as a clip of their own (the motion it shows)."""
    thumbs, ticks, fps = clip
    return np.diff(thumbs.astype(np.float64), axis=0), ticks[1:], fps


def video_distance(a, b, min_overlap: float = 0.5) -> float:
    """Best time-aligned distance of two clips ``(thumbs, ticks, fps)``: the shorter slides along the
    longer, and at each offset the median over its samples of ``1 - correlation`` with the sample of
    the other nearest in time (one sample either side allowed, for jitter); offsets that cover less
    than ``min_overlap`` of the shorter clip's samples do not count. So a clip cut out of a longer one
    (containment), a copy at another frame rate (ticks are times on a ``1/fps`` grid) and a trim all
    meet at their true offset, and clips sharing a background but not their motion do not.
    """
    (ta, xa), (tb, xb) = [(c[1] / c[2], _unit(c[0])) for c in (a, b)]
    if ta[-1] - ta[0] > tb[-1] - tb[0]:
        (ta, xa), (tb, xb) = (tb, xb), (ta, xa)
    dist = 1.0 - xa @ xb.T  # (n, m)
    step = float(np.median(np.diff(tb))) if len(tb) > 1 else 1.0
    # candidate offsets: where each sample of the shorter clip finds its best match
    offsets = np.unique(np.round((tb[dist.argmin(axis=1)] - ta) / (step / 2))) * (step / 2)
    target = ta[None, :] + offsets[:, None]  # (k, n)
    j = np.clip(np.searchsorted(tb, target), 1, len(tb) - 1) if len(tb) > 1 else np.zeros(target.shape, int)
    j = np.where(np.abs(tb[j - 1] - target) < np.abs(tb[j] - target), j - 1, j) if len(tb) > 1 else j
    inside = np.abs(tb[j] - target) <= step
    rows = np.arange(len(ta))[None, :]
    near = np.min([dist[rows, np.clip(j + d, 0, len(tb) - 1)] for d in (-1, 0, 1)], axis=0)
    enough = inside.sum(axis=1) >= min_overlap * len(ta)
    if not enough.any():
        return 1.0
    return float(min(1.0, np.nanmedian(np.where(inside[enough], near[enough], np.nan), axis=1).min()))


def spanning_edges(records: pd.DataFrame, verified, kind: str) -> list[dict]:
    """Verified pairs ``(i, j, sim)`` reduced to a spanning forest (a local union-find): <= n - 1 edges."""
    parent = list(range(len(records)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    edges, rec = [], records.to_dict("records")
    for i, j, sim in verified:
        if find(i) != find(j):
            parent[find(i)] = find(j)
            a, b = rec[i], rec[j]
            edges.append(
                {
                    "a": a["key"],
                    "b": b["key"],
                    "kind": kind,
                    "sim": float(sim),
                    "a_r1": a["r1"],
                    "a_r2": a["r2"],
                    "a_uri": a["uri"],
                    "b_r1": b["r1"],
                    "b_r2": b["r2"],
                    "b_uri": b["uri"],
                }
            )
    return edges


def upper_pairs(sim: np.ndarray, ok: np.ndarray, offset: int = 0):
    """``(i, j, sim)`` for ``ok`` entries above the diagonal (rows start at ``offset``)."""
    rows, cols = np.nonzero(ok)
    keep = cols > rows + offset
    return [(int(i) + offset, int(j), sim[i, j]) for i, j in zip(rows[keep], cols[keep], strict=True)]


def partition_edges(records: pd.DataFrame, cfg: DedupConfig, verify=None) -> pa.Table:
    """``map_groups`` body for one hash partition of buckets: singleton buckets are dropped at once
    (vectorised), so only buckets holding candidates cost a verification call. The edges come back
    as one chunk: a chunk per bucket (20,000 at 100k captions) cost a driver that read the edges
    460 MiB and its parquet writer a row group each (49 MB of footers for 0.6 MB of edges)."""
    shared = records[records.duplicated("bucket", keep=False)]
    tables = [(verify or bucket_edges)(part, cfg) for _, part in shared.groupby("bucket", sort=True)]
    return pa.concat_tables([EDGE.empty_table(), *tables]).combine_chunks()


def bucket_edges(records: pd.DataFrame, cfg: DedupConfig) -> pa.Table:
    """Verify one bucket's candidates (rows sorted by key: deterministic)."""
    edges = []
    for kind, part in records.groupby("kind", sort=True):
        part = part.drop_duplicates("key").sort_values("key").reset_index(drop=True)
        n = len(part)
        if n < 2:
            continue
        if n <= cfg.max_bucket:
            verified = upper_pairs(*similarity(kind, list(part["sig"]), cfg))
        else:  # a huge bucket (blank pages, one logo): star + chain, O(n) verifications
            verified = []
            for i, j in [(0, i) for i in range(1, n)] + [(i, i + 1) for i in range(1, n - 1)]:
                sim, ok = similarity(kind, [part["sig"][i], part["sig"][j]], cfg)
                verified += [(i, j, sim[0, 1])] if ok[0, 1] else []
        edges += spanning_edges(part, verified, kind)
    return pa.Table.from_pylist(edges, schema=EDGE)


# ------------------------------------------------------------------------------------ on Ray


def shuffle_by_bucket(records, partitions: int, verify=None, cfg: DedupConfig | None = None):
    """Hash-shuffle band records on ``bucket mod partitions`` and verify each partition's buckets."""

    def with_shard(batch: pd.DataFrame) -> pd.DataFrame:
        return batch.assign(shard=(batch["bucket"].to_numpy().view(np.uint64) % np.uint64(partitions)).astype(np.int64))

    sharded = records.map_batches(with_shard, batch_format="pandas", **worker_env())
    grouped = sharded.groupby("shard", num_partitions=partitions)
    kwargs = {"cfg": cfg, "verify": verify}
    return grouped.map_groups(partition_edges, fn_kwargs=kwargs, batch_format="pandas", **worker_env())


RECORDS_PER_PARTITION = 1_000_000  # band records one shuffle partition may hold (about 0.6 GB as a frame)
RECORDS_PER_TASK = 100_000  # fewer records than this are not worth another partition's tasks


def records_per_row(cfg: DedupConfig) -> int:
    """An upper bound of the band records one row emits (a video: its bands for 16 sampled frames)."""
    n = ("exact" in cfg.kinds) + ("pixel" in cfg.kinds)
    n += cfg.perceptual_bands * ("perceptual" in cfg.kinds) + cfg.video_bands * 16 * ("video" in cfg.kinds)
    return n + lsh.minhash_params(cfg.minhash_threshold, 128)[0] * ("minhash" in cfg.kinds)


def partitions_for(cfg: DedupConfig, records: int) -> int:
    """Hash partitions of a shuffle of ``records`` records (the pipeline knows the rows from the pass's
    markers): as set; else enough that none holds more than RECORDS_PER_PARTITION (1M captions at 14
    bands: 14), and up to two per cluster CPU while each still gets RECORDS_PER_TASK (the demo: one)."""
    if cfg.shuffle_partitions:
        return cfg.shuffle_partitions
    spread = min(shuffle_partitions(), -(-records // RECORDS_PER_TASK))
    return max(1, spread, -(-records // RECORDS_PER_PARTITION))


def ray_edges(ds, cfg: DedupConfig, rows: int):
    """The Ray dataset of verified edges over every band kind (semantic edges come separately).

    ``rows``: the input's row count (from the pass's markers; counting here would cost a pass over
    the data), which sizes the shuffle.
    """
    records = ds.map_batches(band_records, fn_kwargs={"cfg": cfg}, batch_format="pandas", **worker_env())
    return shuffle_by_bucket(records, band_partitions(cfg, rows), cfg=cfg)


def band_partitions(cfg: DedupConfig, rows: int) -> int:
    """Hash partitions of the band shuffle over ``rows`` rows."""
    return partitions_for(cfg, rows * records_per_row(cfg))


def local_edges(table: pa.Table, cfg: DedupConfig) -> pa.Table:
    """:func:`ray_edges` in this process: the same band records and verification, one partition."""
    records = [band_records(batch.to_pandas(), cfg) for batch in table.to_batches(max_chunksize=4096)]
    return partition_edges(pa.concat_tables([RECORD.empty_table(), *records]).to_pandas(), cfg)
