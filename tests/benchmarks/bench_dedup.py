"""Dedup benchmarks: ours vs datasketch (MinHash, LSH) and pHash vs decode-only, same inputs, one process.

    .venv/bin/python tests/benchmarks/bench_dedup.py [--docs 20000] [--images 400] [--ray-rows 0] [--write]

Prints a Markdown section; ``--write`` replaces the "## Deduplication" section of RESULTS.md.
Figures are one process (one core for the numpy/Python parts; numpy may use more for large ops).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from common import cpu_seconds, machine
from datasketch import MinHash, MinHashLSH
from PIL import Image

from curate.dedup import lsh
from curate.dedup.signatures import image_bits, minhash_batch, minhash_shingles, shingles
from shards import storage

RESULTS = Path(__file__).with_name("RESULTS.md")


def best(fn, repeat: int = 3) -> float:
    """Least wall time of ``repeat`` runs, no warm-up (the first run is one of the measured)."""
    return cpu_seconds(fn, repeat, min, time.perf_counter, warmup=False)


def captions(n: int, seed: int = 0) -> list[str]:
    """30-word captions over a 5k vocabulary; every 10th is a near-copy (3 words changed) of the one before."""
    rng = random.Random(seed)
    vocab = [f"word{i}" for i in range(5000)]
    out = []
    for i in range(n):
        if i % 10 == 9:
            words = out[-1].split()
            for j in rng.sample(range(30), 3):
                words[j] = rng.choice(vocab)
        else:
            words = [rng.choice(vocab) for _ in range(30)]
        out.append(" ".join(words))
    return out


def bench_minhash(n: int) -> list[tuple[str, str, str, str]]:
    texts = captions(n)
    grams = [shingles(t, 3) for t in texts]
    ours = best(lambda: minhash_shingles(grams, 128, 1), repeat=5)
    theirs = best(lambda: MinHash.bulk(grams, num_perm=128, seed=1), repeat=3)
    ours_e2e = best(lambda: minhash_batch(texts, 128, 1, 3), repeat=3)
    theirs_e2e = best(lambda: MinHash.bulk([shingles(t, 3) for t in texts], num_perm=128, seed=1), repeat=2)
    words = best(lambda: minhash_batch(texts, 128, 1, 3, hashing="words"), repeat=5)
    sigs, _ = minhash_shingles(grams, 128, 1)
    ref = np.stack([m.hashvalues for m in MinHash.bulk(grams, num_perm=128, seed=1)])
    same = "identical" if np.array_equal(sigs, ref) else "DIFFERENT"
    rate = lambda t: f"{n / t:,.0f} docs/s"  # noqa: E731
    return [
        (
            "MinHash 128 perm, same shingles (28/doc)",
            rate(ours),
            rate(theirs) + " (`MinHash.bulk`)",
            f"{theirs / ours:.2f}x, signatures {same}",
        ),
        ("MinHash incl. word 3-gram shingling", rate(ours_e2e), rate(theirs_e2e), f"{theirs_e2e / ours_e2e:.2f}x"),
        (
            'MinHash `hashing="words"` from raw text vs `bulk` on ready shingles',
            rate(words),
            rate(theirs),
            f"{theirs / words:.2f}x (goal D1 >= 10)",
        ),
    ]


def bench_lsh(n: int) -> list[tuple[str, str, str, str]]:
    texts = captions(n, seed=1)
    grams = [shingles(t, 3) for t in texts]
    sigs, _ = minhash_shingles(grams, 128, 1)
    sketches = MinHash.bulk(grams, num_perm=128, seed=1)
    bands, rows = lsh.minhash_params(0.8, 128)
    ids = np.arange(n)

    def ours():
        return lsh.candidate_pairs(ids, lsh.minhash_bands(sigs, bands, rows))

    def theirs():
        index = MinHashLSH(threshold=0.8, num_perm=128)
        for i, m in enumerate(sketches):
            index.insert(i, m)
        return {frozenset((i, j)) for i, m in enumerate(sketches) for j in index.query(m) if i != j}

    t_ours, t_theirs = best(ours), best(theirs, repeat=2)
    same = {frozenset(p) for p in ours().tolist()} == theirs()
    return [
        (
            f"LSH candidates, threshold 0.8 (b={bands}, r={rows}), insert+query",
            f"{n / t_ours:,.0f} docs/s",
            f"{n / t_theirs:,.0f} docs/s (`MinHashLSH`)",
            f"{t_theirs / t_ours:.2f}x, candidates {'identical' if same else 'DIFFERENT'}",
        ),
    ]


def bench_phash(count: int) -> list[tuple[str, str, str, str]]:
    import skimage.data

    photos = [getattr(skimage.data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")]
    out = []
    for side in (256, 512):
        blobs = []
        for i in range(count):
            img = Image.fromarray(photos[i % len(photos)][..., :3] if photos[i % len(photos)].ndim == 3 else photos[0])
            img = img.resize((side, side * 3 // 4))
            buf = io.BytesIO()
            img.rotate(i % 7).save(buf, format="JPEG", quality=90)
            blobs.append(buf.getvalue())

        def decode(blobs=blobs):
            grays = []
            for b in blobs:
                img = Image.open(io.BytesIO(b))
                img.draft("L", (64, 64))
                grays.append(img.convert("L"))
            return grays

        t_dec, t_hash = [], []
        for _ in range(5):  # interleaved, so both see the same background load
            t_dec.append(best(decode, 1))
            t_hash.append(best(lambda decode=decode: image_bits(decode()), 1))
        t_dec, t_hash = min(t_dec), min(t_hash)
        out.append(
            (
                f"pHash+dHash, {side}-px JPEG, draft decode",
                f"{count / t_hash:,.0f} img/s",
                f"{count / t_dec:,.0f} img/s (decode only)",
                f"{t_dec / t_hash:.2f} (goal D3 >= 0.8)",
            )
        )
    return out


def bench_exact(files: int = 64, size: int = 4 << 20) -> list[tuple[str, str, str, str]]:
    """The exact digest of whole files (what ``dedup_signatures`` does without ``source_blake3``) vs reading them."""
    import hashlib
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    paths = []
    for i in range(files):
        paths.append(folder / f"f{i}.bin")
        paths[-1].write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())

    def each(fn):  # one file at a time, nothing kept: holding all the bytes would time page faults, not reads
        def run():
            for p in paths:
                fn(p)

        return best(run, 5)

    read = each(lambda p: p.read_bytes())
    hashed = each(lambda p: storage.file_digest(str(p)))
    held = each(lambda p: storage.digest(p.read_bytes()))
    sha = each(lambda p: hashlib.file_digest(p.open("rb"), "sha256"))
    gb = files * size / 1e9
    cold = []
    if drop_page_cache():  # the same from the disk: each pass after the kernel dropped its cached pages
        read_cold = min(timed_cold(lambda p: p.read_bytes(), paths) for _ in range(3))
        hashed_cold = min(timed_cold(lambda p: storage.file_digest(str(p)), paths) for _ in range(3))
        cold = [
            (
                "exact digest from disk (page cache dropped before each pass), BLAKE3 of a read-ahead memory map",
                f"{gb / hashed_cold:.2f} GB/s",
                f"{gb / read_cold:.2f} GB/s (sequential read only)",
                f"{read_cold / hashed_cold:.2f} (goal D4 >= 0.9)",
            )
        ]
    shutil.rmtree(folder)
    return cold + [
        (
            f"exact digest in page cache (BLAKE3, one thread), {files} x {size >> 20} MiB files",
            f"{gb / hashed:.2f} GB/s",
            f"{gb / read:.2f} GB/s (read only)",
            f"{read / hashed:.2f} (goal D4 >= 0.9)",
        ),
        (
            "exact digest, read into bytes then BLAKE3 (the decode stages' way: they hold the bytes)",
            f"{gb / held:.2f} GB/s",
            f"{gb / read:.2f} GB/s (read only)",
            f"{read / held:.2f}",
        ),
        (
            "(former digest) SHA-256 of the same files, hashlib.file_digest",
            f"{gb / sha:.2f} GB/s",
            f"{gb / read:.2f} GB/s (read only)",
            f"{read / sha:.2f}",
        ),
    ]


def drop_page_cache() -> bool:
    """Ask the kernel to drop clean cached pages (root only); False where it may not."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError:
        return False
    return True


def timed_cold(fn, paths) -> float:
    """Seconds for ``fn`` over every path, the page cache dropped first."""
    drop_page_cache()
    t0 = time.perf_counter()
    for p in paths:
        fn(p)
    return time.perf_counter() - t0


def family_caption(i: int) -> str:
    """Caption ``i`` of the grouping benchmark: 30 seeded words; every 10th is caption i-1 with one word changed.

    So the ground truth is known at any size: exactly the pairs (i-1, i) with i % 10 == 9 are duplicates
    (3-gram Jaccard 25/31 = 0.81 > the 0.7 threshold), every other caption is distinct.
    """
    if i % 10 == 9:
        words = family_caption(i - 1).split()
        rng = random.Random(i)
        words[rng.randrange(30)] = f"edit{i}"
        return " ".join(words)
    rng = random.Random(i)
    return " ".join(f"word{rng.randrange(5000)}" for _ in range(30))


def signature_rows(batch: dict) -> pa.Table:
    """Ray task body: ids -> the columns ``dedup_group`` reads, MinHash signatures computed here (not on the driver)."""
    from curate.ray_runner import to_arrow
    from curate.stage import to_batch

    ids = [int(i) for i in batch["id"]]
    texts = [family_caption(i) for i in ids]
    sigs, _ = minhash_batch(texts, hashing="words")
    rows = [
        {
            "key": f"doc{i:08d}",
            "uri": f"mem://{i}",
            "modality": "ocr",
            "meta": {"text_chars": len(t)},
            "minhash": s.astype("<u4").tobytes(),
            "video_hashes": None,
        }
        for i, t, s in zip(ids, texts, sigs, strict=True)
    ]
    return to_arrow(to_batch(rows, ["key", "uri", "modality", "meta", "minhash", "video_hashes"]))


class MemorySampler:
    """Peak private (RssAnon) and shared (RssShmem: Ray's object store pages a process touched) memory,
    sampled twice a second, of this process (the driver) and of every Ray worker process."""

    def __init__(self):
        import threading

        self.driver = {"RssAnon": 0, "RssShmem": 0}
        self.worker = {"RssAnon": 0, "RssShmem": 0}
        self.workers: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _read(pid) -> dict[str, int]:
        text = Path(f"/proc/{pid}/status").read_text()
        return {
            k: int(v.split()[0]) // 1024
            for k, v in (line.split(":", 1) for line in text.splitlines())
            if k in ("RssAnon", "RssShmem")
        }

    def _run(self):
        import os

        while not self._stop.wait(0.5):
            for k, v in self._read(os.getpid()).items():
                self.driver[k] = max(self.driver[k], v)
            for proc in Path("/proc").iterdir():
                try:
                    if proc.name.isdigit() and b"ray::" in (proc / "cmdline").read_bytes():
                        self.workers.add(int(proc.name))
                        for k, v in self._read(proc.name).items():
                            self.worker[k] = max(self.worker[k], v)
                except OSError:
                    continue


def bench_ray(rows: int, shuffle: str = "sort") -> list[tuple[str, str, str, str]]:
    """``dedup_group`` over ``rows`` MinHash signatures made in Ray tasks; time, peak memory, and the answer."""
    import resource
    import tempfile

    import pandas as pd
    import ray

    from curate.cluster import init_ray
    from curate.config import RayConfig
    from curate.stages.dedup import DedupGroup

    init_ray(RayConfig(num_cpus=2, shuffle=shuffle))  # as a pipeline run sets Ray up
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    ds = ray.data.range(rows, override_num_blocks=max(2, rows // 20000))
    ds = ds.map_batches(signature_rows, batch_format="numpy", batch_size=20000).materialize()
    made = time.perf_counter() - t
    work = tempfile.mkdtemp()
    t = time.perf_counter()
    step = DedupGroup(kinds=("minhash",))  # partitions from the row count, as in a run (14 at 1M rows)
    with MemorySampler() as mem:
        step.run(ds, work, rows)
    seconds = time.perf_counter() - t
    driver_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ray.shutdown()
    table = pd.read_parquet(Path(work, "dedup_groups.parquet"))
    found = {tuple(sorted(g["key"])) for _, g in table.groupby("group")}
    truth = {(f"doc{i - 1:08d}", f"doc{i:08d}") for i in range(9, rows, 10)}
    recall, precision = len(found & truth) / len(truth), len(found & truth) / max(1, len(found))
    return [
        (
            f"Ray `dedup_group` (MinHash, threshold 0.7), {rows:,} signatures made in Ray tasks, local 2-CPU "
            f"cluster, {shuffle} shuffle",
            f"{rows / seconds:,.0f} rows/s ({seconds:.1f} s; signatures {made:.1f} s before)",
            f"driver peak RSS {driver_peak:,.0f} MiB ({start_rss:,.0f} after ray.init), of it at most "
            f"{mem.driver['RssAnon']:,} private and {mem.driver['RssShmem']:,} object-store pages; "
            f"{len(mem.workers)} Ray processes: at most {mem.worker['RssAnon']:,} MiB private and "
            f"{mem.worker['RssShmem']:,} object-store pages each",
            f"{len(found):,} groups, {len(truth):,} true pairs: precision {precision:.4f}, recall {recall:.4f}",
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--ray-rows", type=int, default=0, help="also time dedup_group on Ray over this many rows")
    parser.add_argument("--ray-only", action="store_true", help="only the Ray grouping benchmark (--ray-rows)")
    parser.add_argument(
        "--shuffle", choices=("sort", "hash"), default="sort", help="Ray Data's shuffle ([ray] shuffle)"
    )
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    load = Path("/proc/loadavg").read_text().split()[0]
    rows = (
        []
        if args.ray_only
        else bench_minhash(args.docs) + bench_lsh(args.docs) + bench_phash(args.images) + bench_exact()
    )
    if args.ray_rows:
        rows += bench_ray(args.ray_rows, args.shuffle)
    lines = [
        "## Deduplication",
        "",
        f"`tests/benchmarks/bench_dedup.py --docs {args.docs} --images {args.images} --ray-rows {args.ray_rows}` "
        f"on {machine()}, {time.strftime('%Y-%m-%d')}; one process, best of 2-5 runs. The machine "
        f"was shared with other jobs (1-min load average {load} at the start, "
        f"{Path('/proc/loadavg').read_text().split()[0]} at the end, on 2 cores): absolute figures are noisy, "
        "ratios less so.",
        "",
        "| measurement | ours | baseline | ratio ours/baseline |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        old = RESULTS.read_text()
        start = old.find("## Deduplication")
        if start >= 0:
            end = old.find("\n## ", start + 1)
            old = old[:start] + (old[end + 1 :] if end >= 0 else "")
        RESULTS.write_text(old.rstrip("\n") + "\n\n" + text)


if __name__ == "__main__":
    main()
