"""The ``codec_patchify`` stage: one video row in, its clips' codec tokens and codec facts out."""

from __future__ import annotations

import dataclasses

from curate.codec.patchify import PatchifyConfig, encode, patchify_all
from curate.media import TOO_SMALL_OR_SHORT, VideoError
from curate.stage import Stage, failed
from manifests import NonNegativeInt


@dataclasses.dataclass(frozen=True)
class CodecPatchify(Stage, PatchifyConfig):
    """Select the salient 16x16 patches of every clip of a video (parameters: :class:`PatchifyConfig`).

    A video gives all its clips (``frames`` frames each, starting on keyframes, never across a hard
    cut; at most ``max_clips``, 0 = all), within ``meta["span"]`` where a clip table gave one. One
    clip keeps the video's row and key; several become samples ``{key}-c{n}`` of their own, and the video's ledger row says how many it gave and why
    others were not taken (``meta["clips"]``). Each sample holds ``patches_jpg`` (mosaic JPEG),
    ``pos_npy`` (int16 (K, 3) positions) and ``frames_jpg`` (whole frames stacked vertically), with
    ``meta["codec"]`` (codec facts, signal path, saliency statistics, clip times) and
    ``meta["frames"]``. A clip that cannot be patchified fails alone; a video none of whose clips can
    fails with the reason.
    """

    name = "codec_patchify"
    modalities = ("video",)
    outputs = ("patches_jpg", "pos_npy", "frames_jpg")
    fans_out = True
    cpus = 1.0
    batch_size = 4
    max_clips: NonNegativeInt = 0

    def process_row(self, row: dict) -> list[dict]:
        data = row["uri"]  # a path or s3:// URI: decoded as a seekable stream, never read whole
        not_taken: dict = {}
        span = row["meta"].get("span")  # a clip table's row: only [start, end) seconds of the video
        try:
            results = patchify_all(data, self, self.max_clips, not_taken, span)
            samples = [self._sample(row, n, result) for n, result in results]
        except VideoError as exc:
            if exc.code not in TOO_SMALL_OR_SHORT:
                raise
            return [dict(row, keep=False, drop_reason=f"{exc.code}: {exc}")]
        summary = {"taken": len(samples), "not_taken": {k: v for k, v in not_taken.items() if v}}
        if not samples:
            why = f"no clip of {self.min_frames} frames (not taken: {summary['not_taken'] or 'none'})"
            return [dict(row, keep=False, drop_reason=f"too_short: {why}", meta=dict(row["meta"], clips=summary))]
        if len(samples) == 1:  # the video is its one clip: kept, dropped or failed as that clip
            return [dict(samples[0], key=row["key"], meta=dict(samples[0]["meta"], clips=summary))]
        return [dict(row, meta=dict(row["meta"], clips=summary)), *samples]

    def _sample(self, row: dict, n: int, result) -> dict:
        sample = {"key": f"{row['key']}-c{n}", "status": "live", "meta": dict(row["meta"], clip=n)}
        if isinstance(result, VideoError) and result.code in TOO_SMALL_OR_SHORT:
            return dict(sample, keep=False, drop_reason=f"{result.code}: {result}")
        if isinstance(result, Exception):
            return failed(self, sample, result)
        fields = encode(result, self)
        sample.update(patches_jpg=fields["patches_jpg"], pos_npy=fields["pos_npy"], frames_jpg=fields["frames_jpg"])
        sample["meta"].update(codec=fields["codec"], frames=fields["frames"])
        return sample
