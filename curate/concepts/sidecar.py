"""Regenerate a concept bank for a published shard set and relabel it as a sidecar, never touching the tars.

Embeddings come from the folder the run's ``concepts`` step wrote (``source.embeddings``) or are
recomputed from the shards' own ``jpg`` / ``frames.jpg`` (then stored under
``{set}/embeddings/{embed-config hash}`` for the next regeneration). The bank is fitted (or an
existing one named by ``labels.bank`` is reused), every key of the set is assigned its top-k
centroids, and ``shards.labels.write_labels`` publishes one parquet part per shard.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from curate.concepts import store
from curate.concepts.bank import BankError, assign_labels, check_dim, config_hash, fit_bank, load_bank, unusable_rows
from curate.concepts.config import BankManifest
from curate.concepts.embed import embed_rows, load_encoder
from curate.concepts.kmeans import Assigner
from shards import format as fmt
from shards import labels as sidecar
from shards import storage
from shards.index import read_index, shard_uris
from shards.tools import iter_tar

EMBED_BATCH = 32  # rows per encoder call, as the embed stage's batch


def shard_samples(set_folder: str, payload: bool):
    """Yield ``(shard name, [row dicts])`` per shard; rows carry key, modality, meta (and pixels if asked)."""
    index = read_index(set_folder)
    for entry, uri in zip(index["shards"], shard_uris(set_folder, index), strict=True):
        rows = []
        for key, fields in iter_tar(storage.read_bytes(uri), uri):
            meta = json.loads(fields["json"])
            row = {"key": key, "modality": meta["modality"], "meta": meta}
            if payload:
                row.update(jpg=fields.get("jpg"), frames_jpg=fields.get("frames.jpg"))
            rows.append(row)
        yield entry["name"], rows


def reembed(cfg: BankManifest, progress=print) -> tuple[str, dict[str, list[str]]]:
    """Embed every sample of the set with ``cfg.embed``; store the embeddings; return folder and keys per shard."""
    params = {f.name: getattr(cfg.embed, f.name) for f in dataclasses.fields(cfg.embed)}
    folder = storage.join(cfg.source.shards, "embeddings", config_hash(params)[:12])
    encoder = load_encoder(cfg.embed)
    parts, by_shard = [], {}
    for shard, rows in shard_samples(cfg.source.shards, payload=True):
        out = []
        for i in range(0, len(rows), EMBED_BATCH):
            out += embed_rows(encoder, rows[i : i + EMBED_BATCH], cfg.embed.dtype)
        emb = np.stack([fmt.decode_npy(r["emb"]) for r in out]) if out else None
        if emb is not None:
            parts.append(store.write_part(folder, [r["key"] for r in out], [r["modality"] for r in out], emb))
        by_shard[shard] = [r["key"] for r in rows]
        progress(f"embedded {shard}: {len(rows)} samples")
    store.write_index(folder, parts, encoder.info)
    return folder, by_shard


def relabel(cfg: BankManifest, progress=print) -> dict:
    """Fit (or load) the bank, label every key of the shard set, publish the sidecar label set."""
    if cfg.source.embeddings:
        folder = cfg.source.embeddings
        by_shard = {shard: [r["key"] for r in rows] for shard, rows in shard_samples(cfg.source.shards, False)}
    else:
        folder, by_shard = reembed(cfg, progress)
    index = store.read_index(folder)
    if cfg.labels.bank:
        bank, (meta, centroids) = cfg.labels.bank, load_bank(cfg.labels.bank)
    else:
        root = cfg.labels.bank_dir or storage.join(cfg.source.shards, "banks")
        params = {"kmeans": dataclasses.asdict(cfg.kmeans), "source": dataclasses.asdict(cfg.source)}
        bank, meta = fit_bank(folder, cfg.kmeans, root, config_hash(params), progress=_iter_printer(progress))
        meta, centroids = load_bank(bank)
    check_dim(meta, index["dim"], f"the embeddings in {folder}")
    assigner = Assigner(centroids, precision=cfg.kmeans.precision, device=cfg.kmeans.device)
    wanted = {k for keys in by_shard.values() for k in keys}
    labels = {}
    for part in index["parts"]:
        keys, emb = store.read_part(folder, part)
        take = [i for i, k in enumerate(keys) if k in wanted]
        if take:
            x = emb[take].astype(np.float32)
            bad = np.flatnonzero(unusable_rows(x))
            if bad.size:  # nothing is written yet: the label set stays as it was
                raise BankError(
                    f"{bad.size} embeddings in {folder} (e.g. {keys[take[bad[0]]]}) are NaN, inf or all "
                    "zero; recompute them (an [embed] table, without source.embeddings)"
                )
            ids = assign_labels(meta, assigner, x, cfg.kmeans.top_k)
            labels.update(zip((keys[i] for i in take), ids, strict=True))
    missing = sorted(wanted - set(labels))
    if missing:
        raise BankError(
            f"{len(missing)} keys of the shard set (e.g. {missing[:3]}) have no embedding in {folder}; "
            "give an [embed] table and drop source.embeddings to recompute them"
        )
    out = sidecar.labels_folder(cfg.source.shards, meta["version"])
    storage.write_bytes(storage.join(out, "bank.json"), json.dumps({**meta, "bank": bank}, indent=2).encode())
    written = sidecar.write_labels(
        cfg.source.shards, meta["version"], {s: {k: labels[k] for k in keys} for s, keys in by_shard.items()}
    )
    random = bool((meta.get("embedding") or {}).get("random_weights"))
    return {
        "bank": bank,
        "bank_version": meta["version"],
        "k": meta["k"],
        "dim": meta["dim"],
        "labels": out,
        "samples": written["samples"],
        "shards": len(written["parts"]),
        "embeddings": folder,
        "top_k": cfg.kmeans.top_k,
        "random_weights": random,
    }


def _iter_printer(progress):
    return lambda it, obj, sec: progress(f"k-means iteration {it + 1}: objective {obj:.6g} ({sec:.2f} s)")
