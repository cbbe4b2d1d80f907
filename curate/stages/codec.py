"""The ``codec_patchify`` stage: one video row in, its codec tokens and codec facts out."""

from __future__ import annotations

import dataclasses

from curate.codec.patchify import PatchifyConfig, encode, patchify
from curate.stage import Stage


@dataclasses.dataclass(frozen=True)
class CodecPatchify(Stage, PatchifyConfig):
    """Select the salient 16x16 patches of one clip per video (parameters: :class:`PatchifyConfig`).

    Adds ``patches_jpg`` (mosaic JPEG), ``pos_npy`` (int16 (K, 3) positions) and ``frames_jpg``
    (whole frames stacked vertically), and sets ``meta["codec"]`` (codec facts, signal path,
    saliency statistics) and ``meta["frames"]`` (ids of the stored whole frames). A source that
    cannot be patchified raises, so the row becomes ``failed`` with the reason in the ledger.
    """

    name = "codec_patchify"
    modalities = ("video",)
    outputs = ("patches_jpg", "pos_npy", "frames_jpg")
    cpus = 1.0
    batch_size = 4

    def process_row(self, row: dict) -> dict:
        data = row["uri"]  # a path or s3:// URI: decoded as a seekable stream, never read whole
        fields = encode(patchify(data, self), self)
        row.update(patches_jpg=fields["patches_jpg"], pos_npy=fields["pos_npy"], frames_jpg=fields["frames_jpg"])
        row["meta"] = dict(row["meta"], codec=fields["codec"], frames=fields["frames"])
        return row
