"""Codec patchification: keep the 3-25 % of video patches that carry motion and residual.

``patchify(data, PatchifyConfig(...))`` decodes one clip, reads the codec's motion vectors
(or re-encodes to get them), scores every 16x16 patch by camera-compensated motion plus
motion-compensated residual, and selects a global top-K; ``encode`` turns the result into
the shard contract's video fields. See ``curate.codec.cli`` for the inspection command.
"""

from curate.codec.patchify import Patchified, PatchifyConfig, encode, patchify
from curate.codec.selection import chunk_positions, spatial_positions
from curate.media import VideoError

__all__ = ["PatchifyConfig", "Patchified", "VideoError", "chunk_positions", "encode", "patchify", "spatial_positions"]
