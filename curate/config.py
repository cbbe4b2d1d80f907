"""The curation run manifest, as frozen dataclasses (one per TOML section)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Literal

import manifests
from curate.stage import Stage
from curate.stages import build_stage
from shards import storage

Modality = Literal["image", "video", "ocr"]


SourceFormat = Literal["files", "webdataset", "parquet", "csv", "jsonl", "pdf"]
TABLES = ("parquet", "csv", "jsonl")


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """One input collection (see README, Sources).

    ``files``: a local folder or file, or an ``s3://bucket/prefix``, of media files. ``webdataset``:
    existing tar shards (a tar, a folder or prefix of tars, or a brace pattern ``{00000..00099}.tar``),
    one input per sample. ``parquet`` / ``csv`` / ``jsonl``: a table (or a folder, prefix or brace
    pattern of tables) with one input per row, its media at ``uri_column`` (relative URIs resolve
    against the table's folder). ``pdf``: a PDF (or a folder, prefix or brace pattern of them), one
    OCR input per page, rendered at ``dpi``.
    """

    modality: Modality
    uri: str
    format: SourceFormat = "files"
    # file name endings to take as inputs (for webdataset: the image or video member's); empty = the modality's defaults
    extensions: tuple[str, ...] = ()
    uri_column: str = ""  # tables: the column holding the media's URI (required)
    caption_column: str = ""  # tables: the caption, written as the sample's ``txt``
    start_column: str = ""  # tables, video: clip start in seconds (the row becomes [start, end) of the video)
    end_column: str = ""  # tables, video: clip end in seconds
    keep_columns: tuple[str, ...] = ()  # tables: columns carried into the sample's json (``source_meta``)
    dpi: manifests.PositiveFloat | None = None  # pdf: the resolution pages are rendered at (default 150)

    def __post_init__(self):
        table = self.format in TABLES
        if table and not self.uri_column:
            raise ValueError(f"format {self.format!r} needs uri_column (the column holding each row's media URI)")
        named = [k for k in ("uri_column", "caption_column", "start_column", "end_column") if getattr(self, k)]
        if not table and (named or self.keep_columns):
            keys = named + (["keep_columns"] if self.keep_columns else [])
            raise ValueError(
                f"{', '.join(keys)} only apply to table formats ({', '.join(TABLES)}), not {self.format!r}"
            )
        if (self.start_column or self.end_column) and self.modality != "video":
            raise ValueError("start_column and end_column cut video clips: they need modality = 'video'")
        if table and self.modality == "ocr":
            raise ValueError("table formats list images or videos; OCR pages come as files or JSONL {image, text}")
        if self.format == "pdf" and self.modality != "ocr":
            raise ValueError("format 'pdf' lists document pages: it needs modality = 'ocr'")
        if self.dpi is not None and self.format != "pdf":
            raise ValueError(f"dpi renders PDF pages: it applies to format 'pdf', not {self.format!r}")
        if self.format == "webdataset" and self.modality == "ocr":
            raise ValueError("format 'webdataset' reads image or video shards; OCR pages come as files or JSONL")


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    dir: str
    set_name: str = "corpus"  # shard files are {set_name}_{modality}-{version}-{partition:06d}.tar
    version: str = "v1"


@dataclasses.dataclass(frozen=True)
class RayConfig:
    address: str | None = None  # None: start a local cluster sized to this machine; "auto": join one
    num_cpus: manifests.PositiveInt | None = None
    object_store_gb: manifests.PositiveFloat = 1.0
    # global steps' shuffles: "sort" (Ray Data's task-based pull shuffle: no actors to start, seconds
    # faster per step on small and mid-sized inputs) or "hash" (Ray Data's actor-based hash shuffle)
    shuffle: Literal["sort", "hash"] = "sort"


@dataclasses.dataclass(frozen=True)
class S3Config:
    endpoint_url: str | None = None  # override for S3-compatible stores; else AWS_ENDPOINT_URL / AWS


@dataclasses.dataclass(frozen=True)
class RunConfig:
    name: str
    sources: tuple[SourceConfig, ...]
    stages: tuple[dict[str, Any], ...]
    output: OutputConfig
    partition_size: manifests.PositiveInt = 64  # inputs per partition: the unit of resume and of one shard per modality
    partition_bytes: manifests.NonNegativeInt = (
        2_000_000_000  # ...or fewer, once their files add up to this (0 = no limit)
    )
    executor: Literal["ray", "local"] = "ray"
    # stop when the first this many inputs all fail (a source the workers cannot read, a wrong
    # setting), not after the whole corpus; 0: never stop early
    stop_after_failing: int = 200
    ray: RayConfig = RayConfig()
    s3: S3Config = S3Config()

    def __post_init__(self):
        if self.partition_size < 1 or self.partition_bytes < 0 or self.stop_after_failing < 0:
            raise ValueError("partition_size must be at least 1, partition_bytes and stop_after_failing not negative")
        if not self.sources:
            raise ValueError("at least one [[sources]] table is needed")

    def build_stages(self, source: str = "") -> list[Stage]:
        return [build_stage(dict(spec), f"stages.{i}", source) for i, spec in enumerate(self.stages)]


def load_run(path: str, overrides: dict | None = None) -> tuple[RunConfig, list[Stage]]:
    """Load and fully validate a run manifest, stages included, before any work starts. A relative
    output folder becomes absolute here, against the driver's working directory, so every worker
    writes into the same folder (sources resolve alike when listed: ``curate.listing``)."""
    cfg = manifests.load(RunConfig, path, overrides)
    if not storage.is_s3(cfg.output.dir):
        cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, dir=os.path.abspath(cfg.output.dir)))
    return cfg, cfg.build_stages(str(path))
