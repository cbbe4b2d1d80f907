"""Concept-bank parameters as frozen dataclasses, shared by the pipeline stages and the bank manifest.

The ``embed`` stage and the ``[embed]`` table of a bank manifest are one :class:`EmbedConfig`; the
``concepts`` global step and the ``[kmeans]`` table are one :class:`KMeansConfig`, so a parameter
means the same thing in a curation run and in a regeneration.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import manifests

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "tf32", "bf16", "fp16"]


@dataclasses.dataclass(frozen=True)
class EmbedConfig:
    """An open_clip image encoder; weights come from a local path or ``s3://``, never from a hub."""

    model: str = "ViT-H-14-quickgelu"  # an open_clip model name, or the name model_config defines
    weights: str = ""  # local path or s3:// of an open_clip checkpoint; "random" needs allow_random
    allow_random: bool = False  # random weights give labels without semantics: say so explicitly
    model_config: str | None = None  # local/s3 JSON (open_clip schema) for a model open_clip lacks
    image_size: manifests.PositiveInt | None = None  # force the encoder's input size (None: the model's own)
    device: Device = "auto"  # auto: cuda when this worker has one, else cpu
    precision: Precision = "auto"  # auto: bf16 on cuda, fp32 on cpu
    video_frames: manifests.PositiveInt = 8  # frames per video embedding (the reference uses 8)
    video_reduction: Literal["concat", "mean"] = "concat"  # concat: D*frames dims, as the reference
    dtype: Literal["float16", "float32"] = "float16"  # stored embedding dtype
    cache_dir: str = ""  # where s3:// weights are copied ("" = the system temp folder)

    def __post_init__(self):
        if not self.weights:
            raise ValueError("weights: give a local path or s3:// URI of an open_clip checkpoint")
        if self.weights == "random" and not self.allow_random:
            raise ValueError(
                'weights = "random" gives concept labels with no semantics; '
                "set allow_random = true to accept that (the run's rows are flagged random_weights)"
            )
        if self.video_frames < 1:
            raise ValueError("video_frames must be at least 1")


@dataclasses.dataclass(frozen=True)
class KMeansConfig:
    """Lloyd's k-means: faiss on CPU for small K, the chunked torch GEMM k-means on GPU for large K."""

    k: manifests.PositiveInt = 1024
    iters: manifests.NonNegativeInt = 20
    seed: manifests.NonNegativeInt = 0
    init: Literal["random", "kmeans++"] = "random"  # kmeans++ is K sequential passes: small K only
    spherical: bool = False  # unit-norm centroids, cosine assignment (the reference's --l2norm)
    backend: Literal["auto", "faiss", "torch"] = "auto"  # auto: torch on cuda, faiss for k <= faiss_max_k
    faiss_max_k: manifests.PositiveInt = 65536
    device: Device = "auto"
    precision: Precision = "auto"  # of the assignment GEMM; accumulation is always fp32
    max_points_per_centroid: manifests.NonNegativeInt = (
        256  # fit on a seeded sample of k*this points (0 = all); all are assigned
    )
    top_k: manifests.PositiveInt = 10  # labels per sample
    bank_name: str = "bank"

    def __post_init__(self):
        if self.k < 1 or self.iters < 0 or self.top_k < 1:
            raise ValueError("k and top_k must be at least 1 and iters at least 0")
        if self.top_k > self.k:
            raise ValueError(f"top_k={self.top_k} exceeds k={self.k}")


@dataclasses.dataclass(frozen=True)
class SourceSection:
    """The shard set to relabel, and where its embeddings are (else they are recomputed from the shards)."""

    shards: str  # a shard set folder (holds index.json), local or s3://
    embeddings: str | None = None  # an embeddings folder written by the concepts step (holds embeddings.json)


@dataclasses.dataclass(frozen=True)
class LabelsSection:
    """Labels land in {shards}/labels/{bank_version}/ (see shards.labels)."""

    bank_dir: str | None = None  # where the fitted bank is saved (default {shards}/banks)
    bank: str | None = None  # relabel with this saved bank folder instead of fitting one


@dataclasses.dataclass(frozen=True)
class S3Section:
    endpoint_url: str | None = None


@dataclasses.dataclass(frozen=True)
class BankManifest:
    """``python -m curate concepts BANK.toml``: fit a bank and write a sidecar label set for a shard set."""

    name: str
    source: SourceSection
    kmeans: KMeansConfig
    embed: EmbedConfig | None = None  # needed when source.embeddings is not given
    labels: LabelsSection = LabelsSection()
    s3: S3Section = S3Section()

    def __post_init__(self):
        if self.source.embeddings is None and self.embed is None:
            raise ValueError("give source.embeddings (stored embeddings) or an [embed] table to recompute them")


def load_bank_manifest(path: str, overrides: dict | None = None) -> BankManifest:
    return manifests.load(BankManifest, path, overrides)
