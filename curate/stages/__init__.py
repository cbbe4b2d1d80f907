"""Every built-in stage and global step, found by its manifest name through one explicit dictionary.

A ``[[stages]]`` table names an entry of :data:`STAGES`; :func:`build_stage` validates the table's
parameters against that class's fields. Adding a stage is one line here.
"""

from __future__ import annotations

import importlib

from curate.stage import GlobalStep, Stage
from manifests import ManifestError, build

# name -> "module:Class"; a stage's module is imported only when a manifest names it, so a worker
# running codec_patchify never loads torch (concepts) or pandas (dedup grouping) with it
STAGES: dict[str, str] = {
    "image_decode": "curate.stages.images:ImageDecode",
    "ocr_text": "curate.stages.images:OcrText",
    "video_probe": "curate.stages.video:VideoProbe",
    "codec_patchify": "curate.stages.codec:CodecPatchify",
    "min_resolution": "curate.stages.filters:MinResolution",
    "aspect_ratio": "curate.stages.filters:AspectRatio",
    "text_length": "curate.stages.filters:TextLength",
    "language": "curate.stages.language:Language",
    "duration": "curate.stages.filters:Duration",
    "motion_filter": "curate.stages.filters:MotionFilter",
    "dedup_signatures": "curate.stages.dedup:DedupSignatures",
    "tiny_embed": "curate.stages.dedup:TinyEmbed",
    "dedup_group": "curate.stages.dedup:DedupGroup",
    "dedup_apply": "curate.stages.dedup:DedupApply",
    "ocr": "curate.stages.ocr:OcrRead",
    "ocr_filter": "curate.stages.ocr:OcrFilter",
    "ocr_crop": "curate.stages.ocr:OcrCrop",
    "ocr_vocab": "curate.stages.ocr:OcrVocab",
    "ocr_labels": "curate.stages.ocr:OcrLabels",
    "embed": "curate.stages.concepts:Embed",
    "concepts": "curate.stages.concepts:Concepts",
    "assign_concepts": "curate.stages.concepts:AssignConcepts",
}


def stage_class(name: str) -> type[Stage] | type[GlobalStep]:
    """The class registered under a manifest name (its module imported now)."""
    module, cls = STAGES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_stage(spec: dict, where: str = "stages", source: str = "") -> Stage | GlobalStep:
    """Turn one ``[[stages]]`` table (``name`` plus parameters) into a stage or global step."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in STAGES:
        prefix = f"{source}: " if source else ""
        raise ManifestError(f"{prefix}{where}.name: unknown stage {name!r}; valid stages: {', '.join(sorted(STAGES))}")
    return build(stage_class(name), spec, f"{where}[{name}]", source)
