"""``inspect``, ``stats`` and ``verify`` for shard sets, local or on S3."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter

import numpy as np

from shards import fields as shard_fields
from shards import format as fmt
from shards import storage
from shards.index import ShardSetError, find_sets, read_index, shard_uris


def iter_tar(data: bytes, uri: str):
    """Yield ``(key, {field: bytes})`` per sample of a tar held in memory (webdataset's own grouping;
    imported here, not with the module, because webdataset imports torch)."""
    from webdataset import tariterators

    members = (dict(m, __url__=uri) for m in tariterators.tar_file_iterator(io.BytesIO(data)))
    try:
        for sample in tariterators.group_by_keys(members):
            yield sample["__key__"], {k: v for k, v in sample.items() if not k.startswith("__")}
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ShardSetError(f"{uri}: not a readable tar ({exc})") from None


def _label_sets(folder: str, samples: int) -> dict:
    """Published sidecar label sets of a shard set: bank version -> share of the set's samples labelled."""
    try:
        metas = [u for u, _ in storage.list_files(storage.join(folder, "labels")) if u.endswith("/labels.json")]
    except FileNotFoundError:
        return {}
    out = {}
    for uri in metas:
        meta = json.loads(storage.read_bytes(uri))
        out[meta["bank_version"]] = round(meta["samples"] / max(samples, 1), 4)
    return out


def inspect(root: str, samples: int = 3) -> dict:
    """Counts, bytes, modality mix, label coverage and a few samples of every shard set under ``root``.

    Label coverage of ``cls.npy`` is measured on the first shard; sidecar sets come from their counts.
    """
    report = {"root": root, "sets": [], "modality_mix": Counter()}
    for folder in find_sets(root):
        index = read_index(folder)
        preview, n, labelled, mix = [], 0, 0, Counter()
        for uri in shard_uris(folder, index)[:1]:
            for key, fields in iter_tar(storage.read_bytes(uri), uri):
                meta = json.loads(fields["json"])
                n, labelled = n + 1, labelled + ("cls.npy" in fields)
                mix[meta.get("modality")] += 1
                if len(preview) < samples:
                    preview.append(
                        {"key": key, "fields": sorted(fields), "source": meta.get("source"), "uri": uri, "data": fields}
                    )
        modality = index.get("modality") or (mix.most_common(1)[0][0] if mix else None)
        report["modality_mix"][modality] += index["samples"]
        report["sets"].append(
            {
                "folder": folder,
                "set": index["set"],
                "version": index["version"],
                "modality": modality,
                "shards": len(index["shards"]),
                "samples": index["samples"],
                "bytes": index["bytes"],
                "cls_coverage_first_shard": round(labelled / max(n, 1), 4),
                "label_sets": _label_sets(folder, index["samples"]),
                "preview": preview,
            }
        )
    if not report["sets"]:
        raise ShardSetError(f"{root}: no shard set (no index.json) found")
    report["modality_mix"] = dict(report["modality_mix"])
    return report


def preview_image(report: dict, out: str) -> None:
    """Save the previewed samples of an ``inspect`` report as one PNG: pixels, video mosaics, OCR text."""
    from matplotlib.figure import Figure  # a figure of its own: no pyplot, no global backend

    rows = [s for s in report["sets"] if s["preview"]]
    cols = max(len(s["preview"]) for s in rows)
    fig = Figure(figsize=(3 * cols, 3 * len(rows)))
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, s in enumerate(rows):
        for c, sample in enumerate(s["preview"]):
            data = sample["data"]
            pixels = data.get("jpg") or data.get("png") or data.get("frames.jpg") or data.get("patches.jpg")
            if pixels:
                axes[r, c].imshow(shard_fields.image(pixels))
            text = data.get("txt", b"").decode("utf-8", "replace")[:40]
            axes[r, c].set_title(f"{s['modality']} {sample['key']}\n{text}", fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def stats(root: str) -> dict:
    """Reads every tar: per-field bytes, the sample size distribution and per-modality counts."""
    fields, sizes, modalities = Counter(), [], Counter()
    counts = Counter()
    for folder in find_sets(root):
        for uri in shard_uris(folder, read_index(folder)):
            for key, sample in iter_tar(storage.read_bytes(uri), uri):
                for field, value in sample.items():
                    fields[field] += len(value)
                    counts[field] += 1
                sizes.append(sum(len(v) for v in sample.values()))
                try:
                    modalities[json.loads(sample["json"]).get("modality")] += 1
                except (KeyError, ValueError, AttributeError) as exc:
                    why = "no json field" if isinstance(exc, KeyError) else f"unreadable json ({exc})"
                    raise ShardSetError(
                        f"{uri}: sample {key}: {why}; python -m shards verify checks every sample"
                    ) from None
    if not sizes:
        raise ShardSetError(f"{root}: no samples in any shard set")
    q = np.percentile(sizes, [0, 50, 90, 99, 100]).round().astype(int).tolist()
    return {
        "root": root,
        "samples": len(sizes),
        "modalities": dict(modalities),
        "fields": {
            f: {"samples": counts[f], "bytes": fields[f], "mean_bytes": round(fields[f] / counts[f])}
            for f in sorted(fields)
        },
        "sample_bytes": dict(zip(["min", "p50", "p90", "p99", "max"], q, strict=True)),
    }


def verify(root: str) -> dict:
    """Index against tars: every listed tar exists, checksums and counts match, every sample obeys the
    contract (its key included: member names that are paths, absolute or with ``..``, are reported)."""
    problems, checked = [], Counter()
    for folder in find_sets(root):
        index = read_index(folder)
        for entry, uri in zip(index["shards"], shard_uris(folder, index), strict=True):
            try:
                data = storage.read_bytes(uri)
            except FileNotFoundError:
                problems.append(f"{uri}: listed in the index but missing")
                continue
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                problems.append(f"{uri}: sha256 differs from the index")
            if len(data) != entry["bytes"]:
                problems.append(f"{uri}: {len(data)} bytes, the index says {entry['bytes']}")
            n = 0
            try:
                for key, fields in iter_tar(data, uri):
                    n += 1
                    try:
                        fmt.check_key(key)  # a member named ../x or /x is a path, never a sample key
                        shard_fields.check_sample(fields)
                    except (ValueError, KeyError) as exc:
                        problems.append(f"{uri}: sample {key}: {exc}")
            except ShardSetError as exc:
                problems.append(str(exc))
            if n != entry["samples"]:
                problems.append(f"{uri}: {n} samples, the index says {entry['samples']}")
            checked["shards"] += 1
            checked["samples"] += n
    if not checked and not problems:
        raise ShardSetError(f"{root}: no shard set (no index.json) found")
    return {"root": root, "ok": not problems, "problems": problems, **checked}
