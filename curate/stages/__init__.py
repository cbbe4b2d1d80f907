"""Every built-in stage and global step, found by its manifest name through one explicit dictionary.

A ``[[stages]]`` table names an entry of :data:`STAGES`; :func:`build_stage` validates the table's
parameters against that class's fields. Adding a stage is one import and one line here.
"""

from __future__ import annotations

from curate.stage import GlobalStep, Stage
from curate.stages.codec import CodecPatchify
from curate.stages.concepts import AssignConcepts, Concepts, Embed
from curate.stages.dedup import DedupApply, DedupGroup, DedupSignatures, TinyEmbed
from curate.stages.filters import AspectRatio, Duration, MinResolution, MotionFilter, TextLength
from curate.stages.images import ImageDecode, OcrText
from curate.stages.ocr import OcrCrop, OcrFilter, OcrLabels, OcrRead, OcrVocab
from curate.stages.video import VideoProbe
from manifests import ManifestError, build

STAGES: dict[str, type[Stage] | type[GlobalStep]] = {
    cls.name: cls
    for cls in (
        ImageDecode,
        OcrText,
        VideoProbe,
        CodecPatchify,
        MinResolution,
        AspectRatio,
        TextLength,
        Duration,
        MotionFilter,
        DedupSignatures,
        TinyEmbed,
        DedupGroup,
        DedupApply,
        OcrRead,
        OcrFilter,
        OcrCrop,
        OcrVocab,
        OcrLabels,
        Embed,
        Concepts,
        AssignConcepts,
    )
}


def build_stage(spec: dict, where: str = "stages", source: str = "") -> Stage | GlobalStep:
    """Turn one ``[[stages]]`` table (``name`` plus parameters) into a stage or global step."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in STAGES:
        prefix = f"{source}: " if source else ""
        raise ManifestError(f"{prefix}{where}.name: unknown stage {name!r}; valid stages: {', '.join(sorted(STAGES))}")
    return build(STAGES[name], spec, f"{where}[{name}]", source)
