"""open_clip image embeddings for images and videos; weights from a local path or ``s3://`` only.

A video's embedding reduces the embeddings of ``video_frames`` of its stored whole frames
(``frames_jpg``, stacked vertically): ``concat`` L2-normalises each frame, concatenates them in
time order and normalises again (the reference's 8 x D features), ``mean`` averages them. Random
weights are seeded, so every worker of a run builds the same random model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from curate.concepts.bank import unusable_rows
from curate.concepts.config import EmbedConfig
from curate.concepts.kmeans import resolve_device, resolve_precision
from curate.pictures import pixels
from shards import fields, storage
from shards import format as fmt

RANDOM_SEED = 0


def fetch(uri: str, cache_dir: str = "") -> str:
    """A local path for ``uri``: itself when local, else a cached copy (downloaded once, atomically)."""
    if not storage.is_s3(uri):
        if not os.path.isfile(uri):
            raise FileNotFoundError(f"{uri}: no such file")
        return uri
    root = os.path.join(cache_dir or tempfile.gettempdir(), "ovforge-weights")
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, hashlib.sha256(uri.encode()).hexdigest()[:16] + "-" + uri.rsplit("/", 1)[-1])
    if not os.path.exists(path):
        fd, tmp = tempfile.mkstemp(dir=root, prefix=".part-")
        os.close(fd)
        try:
            bucket, key = storage.split_s3(uri)
            storage.s3_client().download_file(bucket, key, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path


@dataclasses.dataclass
class Encoder:
    """The image tower of an open_clip model with its eval preprocessing, on one device."""

    cfg: EmbedConfig
    visual: torch.nn.Module
    preprocess: object
    device: torch.device
    precision: str
    frame_dim: int

    @property
    def info(self) -> dict:
        """What rows record in ``meta["embedding"]`` (and banks in bank.json)."""
        return {
            "model": self.cfg.model,
            "weights": self.cfg.weights,
            "random_weights": self.cfg.weights == "random",
            "image_size": self.cfg.image_size,
            "frame_dim": self.frame_dim,
            "video_frames": self.cfg.video_frames,
            "video_reduction": self.cfg.video_reduction,
            "dtype": self.cfg.dtype,
        }

    def video_dim(self) -> int:
        return self.frame_dim * (self.cfg.video_frames if self.cfg.video_reduction == "concat" else 1)

    @torch.no_grad()
    def images(self, images: list[Image.Image], batch: int = 64) -> np.ndarray:
        """(n, D) float32 L2-normalised embeddings."""
        out = []
        autocast = self.precision in ("bf16", "fp16")
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        for i in range(0, len(images), batch):
            x = torch.stack([self.preprocess(im) for im in images[i : i + batch]]).to(self.device)
            with torch.autocast(self.device.type, dtype=dtype, enabled=autocast):
                y = self.visual(x)
            out.append(torch.nn.functional.normalize(y.float(), dim=-1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.frame_dim), np.float32)

    def videos(self, frame_lists: list[list[Image.Image]]) -> np.ndarray:
        """(n, D') embeddings, one per list of frames, reduced as the config says."""
        picked = [[frames[i] for i in frame_ids(len(frames), self.cfg.video_frames)] for frames in frame_lists]
        per_frame = self.images([f for frames in picked for f in frames])
        per_frame = per_frame.reshape(len(picked), self.cfg.video_frames, -1)
        if self.cfg.video_reduction == "concat":
            y = per_frame.reshape(len(picked), -1)
        else:
            y = per_frame.mean(1)
        return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)


def frame_ids(available: int, wanted: int) -> list[int]:
    """The reference's pick: ``i * step + step // 2`` with ``step = max(1, available // wanted)``."""
    step = max(1, available // wanted)
    return [min(available - 1, i * step + step // 2) for i in range(wanted)]


def split_frames(data: bytes, meta: dict, key: str) -> list[Image.Image]:
    """``frames_jpg`` (whole frames stacked vertically) -> one picture per frame, split by ``shards.fields``."""
    try:
        frames, _ = fields.frames(data, meta)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None
    return [Image.fromarray(frame) for frame in frames]


def load_encoder(cfg: EmbedConfig) -> Encoder:
    """Build the model from open_clip's config (or ``model_config``) and load ``weights`` strictly."""
    import open_clip

    if cfg.model_config:
        spec = json.loads(Path(fetch(cfg.model_config, cfg.cache_dir)).read_text())
        spec = spec.get("model_cfg", spec)
        folder = tempfile.mkdtemp(prefix="ovforge-openclip-")
        with open(os.path.join(folder, f"{cfg.model}.json"), "w") as f:
            json.dump(spec, f)
        open_clip.add_model_config(os.path.join(folder, f"{cfg.model}.json"))
    if cfg.model not in open_clip.list_models():
        raise ValueError(
            f"open_clip has no model {cfg.model!r}; give model_config (a JSON) or one of open_clip's names"
        )
    device = resolve_device(cfg.device)
    random = cfg.weights == "random"
    pretrained = None if random else fetch(cfg.weights, cfg.cache_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                cfg.model, pretrained=pretrained, force_image_size=cfg.image_size
            )
        except (RuntimeError, AssertionError, KeyError, ValueError) as exc:  # open_clip's own shape checks
            if pretrained is None:
                raise
            raise ValueError(
                f"weights {cfg.weights} do not fit open_clip model {cfg.model!r} ({type(exc).__name__}: "
                f"{str(exc)[:300]}); name the architecture the checkpoint was trained as (model or model_config)"
            ) from None
    visual = model.visual.eval().to(device)
    del model
    size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
    with torch.no_grad():
        dim = visual(torch.zeros(1, 3, size, size, device=device)).shape[-1]
    return Encoder(cfg, visual, preprocess, device, resolve_precision(cfg.precision, device), dim)


@contextlib.contextmanager
def one_thread_on_cpu():
    """CPU matmul results depend on the thread count; one thread (as in a 1-CPU Ray worker) everywhere
    makes embeddings, and so banks and labels, the same bits in every executor."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def embed_rows(encoder: Encoder, rows: list[dict], dtype: str) -> list[dict]:
    """Embed rows of a run or a shard set in place: ``emb`` (.npy bytes) and ``meta["embedding"]``.

    Images and OCR pages embed their ``jpg``, videos their stored whole frames (``frames_jpg``).
    A NaN, inf or all-zero embedding raises, naming the row (a stage then redoes the batch row by
    row, so only that row fails).
    """
    videos = [r for r in rows if r["modality"] == "video"]
    stills = [r for r in rows if r["modality"] != "video"]
    for r in videos:
        if r.get("frames_jpg") is None:
            raise ValueError(
                f"{r['key']}: video row has no frames_jpg; put codec_patchify (which stores whole "
                "frames) before embed, or leave video out of embed's modalities"
            )
    for r in stills:
        if r.get("jpg") is None:
            raise ValueError(f"{r['key']}: {r['modality']} row has no jpg; put image_decode before embed")
    with one_thread_on_cpu():
        if stills:
            _put(encoder, stills, encoder.images([pixels(r["jpg"]) for r in stills]), dtype)
        if videos:
            frames = [split_frames(r["frames_jpg"], r["meta"], r["key"]) for r in videos]
            _put(encoder, videos, encoder.videos(frames), dtype)
    return rows


def _put(encoder: Encoder, rows: list[dict], emb: np.ndarray, dtype: str) -> None:
    bad = np.flatnonzero(unusable_rows(emb))
    if bad.size:
        raise ValueError(f"{rows[bad[0]]['key']}: the encoder gave a NaN, inf or all-zero embedding")
    for row, vec in zip(rows, emb, strict=True):
        row["emb"] = fmt.encode_npy(vec.astype(dtype))
        row["meta"]["embedding"] = dict(encoder.info, dim=int(vec.shape[0]))
