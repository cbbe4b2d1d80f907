"""Video probing: container facts that filters and cost-based scheduling need, without a full decode."""

from __future__ import annotations

import dataclasses

import av

from curate.media import VideoError, open_video, pixel_aspect
from curate.stage import Stage
from shards import storage


def probe(data: bytes | str, uri: str) -> dict:
    """Codec, size, fps, duration, pixel format and rotation of the first video stream.

    ``data``: the file's bytes, or a local path or ``s3://`` URI, read where the demuxer seeks.

    Decodes the first frame, so a file whose header parses but whose stream does not fails here,
    and demuxes (without decoding) every packet: ``frames_present`` counts them and ``end_time`` is
    where the last one ends, so a file whose packets stop early is told from one that merely skips
    frames (sparse timestamps: old AVIs, screen recordings), whose packets run to the end.
    """
    with open_video(data, uri) as container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise VideoError(f"{uri}: no video stream (streams: {', '.join(kinds)})", "no_video_stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        else:
            duration = 0.0
        facts = {
            "codec": ctx.name,
            "width": ctx.width,
            "height": ctx.height,
            "pixel_aspect": round(pixel_aspect(stream), 4),
            "pix_fmt": ctx.format.name if ctx.format else None,
            "fps": float(rate) if rate else None,
            "frames": stream.frames or None,
            "duration": duration,
            "bit_rate": container.bit_rate,
        }
        try:
            first = next(container.decode(stream))
        except (StopIteration, av.FFmpegError) as exc:
            raise VideoError(f"{uri}: no decodable frame ({exc or 'empty stream'})", "no_frames") from None
        facts["rotation"] = int(getattr(first, "rotation", 0) or 0)
    present, end = _demux_extent(data, uri)
    facts["frames_present"], facts["end_time"] = present, round(end, 3)
    if not facts["width"] or not facts["height"]:
        raise VideoError(f"{uri}: video stream has no frame size", "no_frame_size")
    if not facts["duration"] and facts["fps"] and facts["frames"]:
        facts["duration"] = facts["frames"] / facts["fps"]
    return facts


def _demux_extent(data: bytes | str, uri: str) -> tuple[int, float]:
    """(packets holding data, end of the last one in seconds), without decoding; stops at a corrupt packet."""
    present, end = 0, 0.0
    with open_video(data, uri) as container:
        stream = container.streams.video[0]
        base = float(stream.time_base) if stream.time_base else 0.0
        start = stream.start_time or 0
        try:
            for packet in container.demux(stream):
                if packet.size:
                    present += 1
                    if packet.pts is not None and base:
                        end = max(end, (packet.pts - start + (packet.duration or 0)) * base)
        except av.FFmpegError:
            pass
    return present, end


def truncated(facts: dict) -> bool:
    """Fewer packets than declared *and* they stop short of the declared duration (by over 5 %)."""
    declared, present, duration = facts["frames"], facts["frames_present"], facts["duration"]
    if not declared or present >= declared:
        return False
    if duration and facts.get("end_time"):
        return facts["end_time"] < 0.95 * duration
    return True


@dataclasses.dataclass(frozen=True)
class VideoProbe(Stage):
    """Record container facts in ``meta`` and fail unreadable, truncated or audio-only files."""

    name = "video_probe"
    modalities = ("video",)
    # keep files whose index declares more frames than are present (a later stage decodes what survives)
    allow_truncated: bool = False

    def process_row(self, row: dict) -> dict:
        facts = probe(row["uri"], row["uri"])  # streamed from the file or S3, never read whole
        if truncated(facts) and not self.allow_truncated:
            raise VideoError(
                f"{row['uri']}: truncated, {facts['frames_present']} of {facts['frames']} frames present, "
                f"ending at {facts['end_time']:g} of {facts['duration']:g} s",
                "truncated",
            )
        row["meta"].update(facts, source_blake3=storage.file_digest(row["uri"]))
        return row
