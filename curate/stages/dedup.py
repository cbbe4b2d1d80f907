"""Dedup stages: ``dedup_signatures`` (per row), ``dedup_group`` (global step), ``dedup_apply``.

A manifest lists ``dedup_signatures`` after decoding and filtering (it reads the curated ``jpg``,
the ``txt`` transcript and the source video), then ``dedup_group``; the pipeline ends the pass
there, the step writes ``dedup_groups.parquet`` under its work folder and returns the
``dedup_apply`` stage that heads the next pass and turns every non-kept member into a ``dropped``
ledger row (``dedup_apply/duplicate``, detail ``of <key> (group <id>, <kind>)``)::

    [[stages]]
    name = "dedup_signatures"   # after image_decode, ocr_text, video_probe and the filters
    [[stages]]
    name = "dedup_group"
    kinds = ["exact", "pixel", "perceptual", "video", "minhash"]   # + "semantic" with an embedding column
    keep = "resolution"         # or "longest", "first"
"""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Literal

import pandas as pd
import pyarrow as pa

from curate.dedup import signatures as sg
from curate.dedup.grouping import EDGE, DedupConfig, band_partitions, local_edges, ray_edges
from curate.dedup.keep import group_table
from curate.dedup.semantic import local_semantic_edges, ray_semantic_edges, tiny_image_embedding
from curate.pictures import pixels, reduced_grey
from curate.stage import Filter, GlobalStep, Stage
from manifests import NonNegativeInt, PositiveFloat, PositiveInt
from shards import storage


@dataclasses.dataclass(frozen=True)
class DedupSignatures(Stage):
    """Compact signatures in ``meta["dedup"]`` (hex) and two bytes columns: ``minhash`` (uint32
    little-endian x ``num_perm``) and ``video_hashes`` (``signatures.pack_video``: a 16x16 gray
    thumbnail and the grid tick of each frame sampled at ``video_fps``, 260 bytes a sample)."""

    name = "dedup_signatures"
    modalities = ("image", "video", "ocr")
    outputs = ("minhash", "video_hashes")
    batch_size = 64

    exact: bool = True  # BLAKE3 of the source bytes (reuses meta.source_blake3 when a decode stage set it)
    pixel: bool = True  # SHA-256 of the decoded picture at 64x64
    perceptual: bool = True  # pHash + dHash (128 bits)
    perceptual_modalities: tuple[str, ...] = ("image",)  # OCR pages look alike: compare their text instead
    minhash: bool = True  # OCR transcripts (``txt``) and captions (``meta[caption_field]``)
    video: bool = True  # per-sample thumbnails on the clip's clock, and the duration
    shingle_words: PositiveInt = 3
    minhash_hashing: Literal["sha1", "words"] = "sha1"  # sha1: datasketch's default hash; words: faster
    num_perm: PositiveInt = 128
    seed: NonNegativeInt = 1
    caption_field: str = "caption"
    video_fps: PositiveFloat = 8.0
    video_max_frames: PositiveInt = 256
    video_keyframes_only: bool = False

    def process_batch(self, rows: list[dict]) -> list[dict]:
        pictures = []
        for row in rows:
            sigs = row["meta"].setdefault("dedup", {})
            data = None
            if self.exact and not row["meta"].get("source_blake3"):
                wants_bytes = row["modality"] != "video" and (self.pixel or self.perceptual) and row.get("jpg") is None
                if wants_bytes:  # read once, for the hash and the picture (a video's digest streams)
                    data = storage.read_bytes(row["uri"])
                    sigs["blake3"] = storage.digest(data)
                else:
                    sigs["blake3"] = storage.file_digest(row["uri"])
            if row["modality"] == "video" and self.video:
                codec = row["meta"].get("codec")  # codec_patchify's facts (video_probe's is the codec's name)
                codec = codec if isinstance(codec, dict) else {}  # a clip of a longer video signs its own range
                thumbs, ticks, fps, duration = sg.video_signature(  # streamed from the file or S3
                    row["uri"],
                    row["uri"],
                    self.video_fps,
                    self.video_max_frames,
                    self.video_keyframes_only,
                    codec.get("start_time", 0.0),
                    codec.get("end_time"),
                )
                row["video_hashes"] = sg.pack_video(thumbs, ticks, fps)
                sigs.update(frames=len(ticks), duration=round(duration, 3))
            elif row["modality"] != "video" and (self.pixel or self.perceptual):
                picture = row.get("jpg") or data or storage.read_bytes(row["uri"])
                if self.pixel:
                    img = pixels(picture)
                    sigs["pixel"] = sg.pixel_digest(img)
                if self.perceptual and row["modality"] in self.perceptual_modalities:
                    pictures.append((sigs, img.convert("L") if self.pixel else reduced_grey(picture)))
        if pictures:
            bits = sg.image_bits([gray for _, gray in pictures])
            for (sigs, _), b in zip(pictures, bits, strict=True):
                sigs["phash"], sigs["dhash"] = sg.pack(b[:64]).hex(), sg.pack(b[64:]).hex()
        if self.minhash:
            texts = [(i, self._text(row)) for i, row in enumerate(rows)]
            texts = [(i, t) for i, t in texts if t]
            values, ok = sg.minhash_batch(
                [t for _, t in texts], self.num_perm, self.seed, self.shingle_words, self.minhash_hashing
            )
            scheme = f"{self.minhash_hashing}/{self.shingle_words}-gram/seed{self.seed}"
            for (i, _), v, good in zip(texts, values, ok, strict=True):
                if good:  # signatures of different schemes never share a band (the scheme salts it)
                    rows[i]["minhash"] = v.astype("<u4").tobytes()
                    rows[i]["meta"]["dedup"]["minhash"] = scheme
        return rows

    def _text(self, row: dict) -> str:
        txt = row.get("txt")
        text = bytes(txt).decode("utf-8", "replace") if txt is not None else ""
        caption = row["meta"].get(self.caption_field)
        return "\n".join(t for t in (text, caption if isinstance(caption, str) else "") if t)


@dataclasses.dataclass(frozen=True)
class TinyEmbed(Stage):
    """A 256-float tiny-image embedding in column ``embedding`` (float32 bytes): semantic dedup's
    stand-in until CLIP embeddings exist; it finds near-identical pictures, not concepts."""

    name = "tiny_embed"
    modalities = ("image",)
    outputs = ("embedding",)

    def process_row(self, row: dict) -> dict:
        data = row.get("jpg") or storage.read_bytes(row["uri"])
        row["embedding"] = tiny_image_embedding(reduced_grey(data)).astype("<f4").tobytes()
        return row


@dataclasses.dataclass(frozen=True)
class DedupGroup(GlobalStep, DedupConfig):
    """Group duplicates (on Ray, or in this process for the local executor); return ``dedup_apply``.

    ``kinds`` picks the signature kinds to link on (exact, pixel, perceptual, video, minhash,
    semantic); ``keep`` is the rule for the one member kept per group.
    """

    name = "dedup_group"

    @property
    def columns(self) -> tuple[str, ...]:
        extra = (self.semantic_column,) if "semantic" in self.kinds else ()
        return ("key", "uri", "modality", "meta", "minhash", "video_hashes", *extra)

    def config(self) -> DedupConfig:
        return DedupConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DedupConfig)})

    def run(self, ds, workdir: str, rows: int) -> Stage:
        """Edges on Ray, then the groups in one task over the edge blocks: the driver passes their
        references on and never holds the rows, so its memory does not grow with the corpus."""
        import ray

        from curate.cluster import worker_env

        cfg = self.config()
        edges = ray_edges(ds, cfg, rows)
        if "semantic" in cfg.kinds:
            semantic = ray_semantic_edges(ds, cfg)
            edges = edges if semantic is None else edges.union(semantic)
        groups = ray.remote(_groups_of_blocks).options(**worker_env())
        shape = {"rows": rows, "band_partitions": band_partitions(cfg, rows)}
        return ray.get(groups.remote(self, workdir, shape, *edges.to_arrow_refs()))

    def run_local(self, table: pa.Table, workdir: str) -> Stage:
        cfg = self.config()
        edges = [local_edges(table, cfg)]
        if "semantic" in cfg.kinds:
            edges.append(local_semantic_edges(table, cfg))
        edges = pa.concat_tables([e for e in edges if e is not None]).to_pandas()
        return self._groups(edges, workdir, {"rows": table.num_rows, "band_partitions": 1})

    def _groups(self, edges: pd.DataFrame, workdir: str, shape: dict) -> Stage:
        """Groups from the verified edges: the group table, its summary, and the stage that applies it.
        ``shape``: the rows grouped and the band shuffle's partitions, for the summary."""
        cfg = self.config()
        table = group_table(edges)
        uri = storage.join(workdir, "dedup_groups.parquet")
        buf = io.BytesIO()
        table.to_parquet(buf, index=False)
        storage.write_bytes(uri, buf.getvalue())
        dropped = table[table["dup_of"].notna()]
        summary = {
            "groups": int(table["group"].nunique()),
            "members": len(table),
            "dropped": len(dropped),
            "dropped_by_kind": {k: int(n) for k, n in dropped["kind"].value_counts().sort_index().items()},
            **shape,
            "config": dataclasses.asdict(cfg),
        }
        storage.write_bytes(storage.join(workdir, "dedup_summary.json"), json.dumps(summary, indent=1).encode())
        return DedupApply(table=uri)


def _groups_of_blocks(step: DedupGroup, workdir: str, shape: dict, *blocks: pa.Table) -> Stage:
    """Ray task body: the group table of ``step`` from the edge blocks (Ray passes them in as tables)."""
    return step._groups(pa.concat_tables([EDGE.empty_table(), *blocks]).to_pandas(), workdir, shape)


@dataclasses.dataclass(frozen=True)
class DedupApply(Filter):
    """Drop every non-kept group member (``dedup_apply/duplicate``); tag every member's group."""

    name = "dedup_apply"
    table: str = ""  # the group table ``dedup_group`` wrote

    def setup(self) -> None:
        frame = pd.read_parquet(io.BytesIO(storage.read_bytes(self.table)))
        self.hold("groups", {r["key"]: r for r in frame.to_dict("records")})

    def reason(self, row: dict) -> str | None:
        member = self.groups.get(row["key"])
        if member is None:
            return None
        row["meta"].update(dedup_group=member["group"], dedup_group_size=int(member["size"]))
        if not isinstance(member["dup_of"], str):
            return None
        row["meta"].update(dup_of=member["dup_of"], dup_kind=member["kind"])
        return f"duplicate: of {member['dup_of']} (group {member['group']}, {member['kind']})"
