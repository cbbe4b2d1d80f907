"""Corpora in the layouts real ones ship in, with known ground truth: img2dataset shards (tar of
``{key}.jpg`` + ``.txt`` + ``.json``, a ``.parquet`` of download status beside each) and tables."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import skimage.data
from PIL import Image


def photo(seed: int, size: int = 72, fmt: str = "JPEG") -> bytes:
    """A crop of a real photograph (scikit-image's astronaut), different per seed."""
    rng = np.random.default_rng(seed)
    img = skimage.data.astronaut()
    y, x = rng.integers(0, img.shape[0] - size, 2)
    buf = io.BytesIO()
    Image.fromarray(img[y : y + size, x : x + size]).save(buf, format=fmt)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, shard: int, samples: list[dict], not_downloaded: int = 0) -> dict[str, dict]:
    """An img2dataset shard: ``samples`` are dicts with ``image`` bytes, ``ext``, optional ``caption``
    (None: no .txt member) and ``json``; keys ``{shard:05d}{n:04d}`` as img2dataset names them. The
    parquet beside it lists them as ``success`` and ``not_downloaded`` more as failed downloads
    (never in the tar). Returns key -> sample."""
    path.parent.mkdir(parents=True, exist_ok=True)
    truth, rows = {}, []
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for n, s in enumerate(samples):
            key = f"{shard:05d}{n:04d}"
            meta = {"key": key, "status": "success", **s["json"]}
            _add(tar, f"{key}.{s.get('ext', 'jpg')}", s["image"])
            if s.get("caption") is not None:
                _add(tar, f"{key}.txt", s["caption"].encode())
            _add(tar, f"{key}.json", json.dumps(meta).encode())
            truth[key] = dict(s, json=meta)
            rows.append({"key": key, "status": "success", "caption": s.get("caption")})
    for n in range(not_downloaded):
        rows.append({"key": f"{shard:05d}{len(samples) + n:04d}", "status": "failed_to_download", "caption": None})
    pq.write_table(pa.Table.from_pylist(rows), path.with_suffix(".parquet"))
    return truth


def img2dataset_corpus(root: Path) -> dict:
    """Two shards. 00000: six samples (0001 without a caption, 0003 a corrupt JPEG, 0004 a PNG) and
    one failed download. 00001: four samples, the tar cut inside 00001 0002's image, so 0003 is gone.

    Returns the ground truth: key -> sample, and the keys that must end kept / failed (with reason).
    """
    first = [
        {"image": photo(n, fmt="PNG" if n == 4 else "JPEG"), "ext": "png" if n == 4 else "jpg"}
        | {"caption": None if n == 1 else f"caption {n}: a photo, ünïcode", "json": {"url": f"http://x/{n}", "w": n}}
        for n in range(6)
    ]
    first[3]["image"] = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4  # a JPEG header, then garbage
    truth = write_shard(root / "00000.tar", 0, first, not_downloaded=1)
    second = [
        {"image": photo(10 + n), "caption": f"second shard {n}", "json": {"url": f"http://y/{n}"}} for n in range(4)
    ]
    truth |= write_shard(root / "00001.tar", 1, second)
    with tarfile.open(root / "00001.tar") as tar:
        member = tar.getmember("000010002.jpg")
    data = (root / "00001.tar").read_bytes()
    (root / "00001.tar").write_bytes(data[: member.offset_data + member.size // 2])
    return {
        "samples": truth,
        "kept": sorted(k for k in truth if k not in ("000000003", "000010002", "000010003")),
        "failed": {
            "000000003": "image_decode/unreadable",
            "000010002": "source/truncated",
            "000010003": "source/missing_from_tar",
        },
    }
