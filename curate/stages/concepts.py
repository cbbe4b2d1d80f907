"""Concept labels in a curation run: ``embed`` (actor) -> ``concepts`` (global step) -> ``assign_concepts``.

``embed`` adds an ``emb`` column (.npy bytes) and ``meta["embedding"]``. ``concepts`` persists the
live rows' embeddings under its workdir, fits a bank in one Ray task (a GPU one when ``gpus`` > 0)
and returns ``assign_concepts``, which heads the next pass and writes each row's top-k centroid
ids as ``cls_npy`` (the shard's ``cls.npy``) with the bank version in ``meta["concepts"]``. One
``concepts`` step fits one bank over its ``modalities``: images and videos (whose concatenated
frame embeddings are wider) take one step each, as the reference's separate banks do.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.concepts.bank import BankError, assign_labels, config_hash, fit_bank, load_bank, unusable_rows
from curate.concepts.config import Device, EmbedConfig, KMeansConfig, Precision
from curate.concepts.embed import embed_rows, load_encoder
from curate.stage import GlobalStep, Stage
from manifests import NonNegativeFloat, PositiveFloat, PositiveInt
from shards import format as fmt
from shards import storage

RANDOM_WARNING = "concept labels come from randomly initialised embedding weights and carry no semantics"


def _check_modalities(modalities: tuple[str, ...]) -> None:
    bad = set(modalities) - set(fmt.MODALITIES)
    if not modalities or bad:
        raise ValueError(f"modalities {list(modalities)}: choose from {list(fmt.MODALITIES)}")


@dataclasses.dataclass(frozen=True)
class Embed(Stage, EmbedConfig):
    """open_clip embeddings of ``jpg`` (images, OCR pages) and ``frames_jpg`` (videos) as ``emb``."""

    name = "embed"
    outputs = ("emb",)

    modalities: tuple[str, ...] = ("image", "video")
    gpus: NonNegativeFloat = 0.0  # a GPU per actor (fractions share one); device "auto" then uses it
    batch_size: PositiveInt = 32

    def __post_init__(self):
        super().__post_init__()
        _check_modalities(self.modalities)

    def setup(self) -> None:
        self.hold("encoder", load_encoder(self))

    def process_batch(self, rows: list[dict]) -> list[dict]:
        return embed_rows(self.encoder, rows, self.dtype)


@dataclasses.dataclass(frozen=True)
class AssignConcepts(Stage):
    """Top-k nearest centroids of a saved bank for each row's ``emb``, as ``cls_npy`` (int32 .npy)."""

    name = "assign_concepts"
    outputs = ("cls_npy",)

    bank: str = ""  # a bank folder (bank.json + centroids.npy), local or s3://
    top_k: PositiveInt = 10
    modalities: tuple[str, ...] = ("image",)
    device: Device = "auto"
    precision: Precision = "auto"
    gpus: NonNegativeFloat = 0.0
    batch_size: PositiveInt = 1024

    def __post_init__(self):
        if not self.bank:
            raise ValueError("bank: give the folder of a saved bank")
        _check_modalities(self.modalities)

    def setup(self) -> None:
        from curate.concepts.kmeans import Assigner

        meta, centroids = load_bank(self.bank)
        self.hold("meta", meta)
        self.hold("assigner", Assigner(centroids, precision=self.precision, device=self.device))

    def process_batch(self, rows: list[dict]) -> list[dict]:
        for r in rows:
            if r.get("emb") is None:
                raise ValueError(f"{r['key']}: no emb column; put embed (with this modality) before concepts")
        emb = np.stack([fmt.decode_npy(r["emb"]) for r in rows]).astype(np.float32)
        bad = np.flatnonzero(unusable_rows(emb))
        if bad.size:  # the batch is then redone row by row, so only these rows fail
            raise ValueError(f"{rows[bad[0]]['key']}: its embedding is NaN, inf or all zero; no nearest concept")
        labels = assign_labels(self.meta, self.assigner, emb, self.top_k)
        random = bool((self.meta.get("embedding") or {}).get("random_weights"))
        for row, ids in zip(rows, labels, strict=True):
            row["cls_npy"] = fmt.encode_npy(ids)
            row["meta"]["concepts"] = {"bank": self.meta["version"], "top_k": self.top_k, "random_weights": random}
            if random:  # the run summary lists every distinct warning its rows carry
                row["meta"]["warnings"] = sorted({*row["meta"].get("warnings", []), RANDOM_WARNING})
        return rows


@dataclasses.dataclass(frozen=True)
class Concepts(GlobalStep, KMeansConfig):
    """Persist the embeddings, fit a bank (parameters: :class:`KMeansConfig`), return ``assign_concepts``."""

    name = "concepts"
    columns = ("key", "modality", "meta", "emb")

    modalities: tuple[str, ...] = ("image",)
    bank_dir: str | None = None  # where banks are saved (default: this step's workdir/banks)
    gpus: NonNegativeFloat = 0.0  # GPUs of the fit task and of each assign actor
    cpus: PositiveFloat = 1.0

    def __post_init__(self):
        super().__post_init__()
        _check_modalities(self.modalities)

    def run(self, ds, workdir: str, rows: int) -> Stage:
        import ray

        from curate.cluster import worker_env

        folder = storage.join(workdir, "embeddings")
        wanted = set(self.modalities)
        write = functools.partial(_write_part, folder=folder)
        rows = (
            ds.filter(lambda r: r["modality"] in wanted)
            .map_batches(write, batch_format="numpy", batch_size=PART_ROWS, **worker_env())
            .take_all()
        )
        remote = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus)(fit_bank).options(**worker_env())
        return self._fit(rows, folder, workdir, lambda *args: ray.get(remote.remote(*args)))

    def run_local(self, table: pa.Table, workdir: str) -> Stage:
        folder = storage.join(workdir, "embeddings")
        table = table.filter(pc.is_in(table["modality"], pa.array(sorted(self.modalities))))
        rows = []
        for batch in table.combine_chunks().to_batches(max_chunksize=PART_ROWS):  # as Ray batches them
            written = _write_part(batch.to_pydict(), folder)
            rows += [dict(zip(written, values, strict=True)) for values in zip(*written.values(), strict=True)]
        return self._fit(rows, folder, workdir, fit_bank)

    def _fit(self, rows: list[dict], folder: str, workdir: str, fit) -> Stage:
        """Index the written parts, fit the bank with ``fit`` (a Ray task or a call here) unless an earlier
        attempt fitted it on the same embeddings, and return the stage that assigns it."""
        from curate.concepts import store

        wanted = set(self.modalities)
        if not rows:
            raise BankError(f"concepts: no live {sorted(wanted)} rows to fit a bank on")
        models = {m for r in rows for m in json.loads(r["embedding"])}
        if len(models) != 1:
            raise BankError(
                f"concepts: rows were embedded by {len(models)} different models/settings: {sorted(models)}"
            )
        index = store.write_index(folder, [json.loads(r["part"]) for r in rows], json.loads(models.pop()))
        bank_root = self.bank_dir or storage.join(workdir, "banks")
        params = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        # same embeddings and settings as a finished earlier attempt: reuse its bank, so a resumed run
        # labels every partition with one bank version (GPU sums are not bit-reproducible)
        fingerprint = config_hash({"params": params, "bank_root": bank_root, "parts": index["parts"]})
        result_uri = storage.join(workdir, "result.json")
        result = json.loads(storage.try_read(result_uri) or b"{}")
        if result.get("fingerprint") == fingerprint and storage.exists(storage.join(result["bank"], "bank.json")):
            print(f"concepts: reusing bank {result['version']} (same embeddings and settings)")
            return self._assign(result["bank"])
        bank, meta = fit(folder, self, bank_root, config_hash(params))
        random = bool(index["embedding"].get("random_weights"))
        result = {
            "bank": bank,
            "version": meta["version"],
            "k": meta["k"],
            "n": meta["n"],
            "dim": meta["dim"],
            "objective_per_point": meta["objective_per_point"],
            "modalities": sorted(wanted),
            "random_weights": random,
            "warning": RANDOM_WARNING if random else None,
            "fingerprint": fingerprint,
        }
        storage.write_bytes(result_uri, json.dumps(result, indent=2).encode())
        print(f"concepts: bank {meta['version']} k={meta['k']} dim={meta['dim']} from {meta['n']} embeddings")
        if random:
            print(f"WARNING: {RANDOM_WARNING}")
        return self._assign(bank)

    def _assign(self, bank: str) -> AssignConcepts:
        return AssignConcepts(
            bank=bank,
            top_k=self.top_k,
            modalities=self.modalities,
            device=self.device,
            precision=self.precision,
            gpus=self.gpus,
        )


PART_ROWS = 4096  # embeddings per stored part


def _write_part(batch: dict, folder: str) -> dict:
    """Store one batch of rows' embeddings as a part; its descriptor and the embedding models it holds."""
    from curate.concepts import store

    keys, mods, metas = list(batch["key"]), list(batch["modality"]), list(batch["meta"])
    missing = [k for k, e in zip(keys, batch["emb"], strict=True) if e is None]
    if missing:
        raise ValueError(f"{len(missing)} rows (e.g. {missing[0]}) have no emb; put embed before concepts")
    emb = np.stack([fmt.decode_npy(bytes(e)) for e in batch["emb"]])
    models = {json.dumps({k: v for k, v in json.loads(m)["embedding"].items() if k != "dim"}) for m in metas}
    part = store.write_part(folder, keys, mods, emb)
    return {"part": [json.dumps(part)], "embedding": [json.dumps(sorted(models))]}
