"""Run-manifest schema: one frozen dataclass per TOML section, loaded by ``manifests.load``.

Each builder receives only its own section. Field comments are the documentation of the
manifest keys; unknown keys are rejected by the loader before anything is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# name -> (width, depth, heads, mlp); head_dim must be a multiple of 32 for the 4:6:6 RoPE split.
FLAVOURS = {
    "debug": (64, 2, 2, 256),
    "small": (384, 6, 6, 1536),
    "base": (768, 12, 12, 3072),
    "large": (1024, 24, 16, 4096),
    "huge": (1280, 32, 20, 5120),
}


@dataclass(frozen=True)
class ModelConfig:
    flavour: Literal["debug", "small", "base", "large", "huge"] = "debug"
    patch: int = 16  # 14 also works; codec patches (16 px) are resized to it
    rope_theta: float = 10000.0

    @property
    def dims(self) -> tuple[int, int, int, int]:
        return FLAVOURS[self.flavour]


@dataclass(frozen=True)
class DataConfig:
    # shard set folders (local or s3://), or folders holding them: each set's index names its modality,
    # one set per modality, and every modality needs a head (shards.reader.ShardStream reads them)
    shards: tuple[str, ...] = ()
    weights: dict[str, float] = field(default_factory=dict)  # modality -> mixing weight; empty: set sizes
    batch_size: int = 8  # samples per micro-batch per rank, packed into one token sequence
    image_size: int = 224  # images and OCR pages (square, divisible by the patch)
    # (from_step, image_size) pairs; overrides image_size from that optimizer step on (224 then 448)
    resolution_schedule: tuple[tuple[int, ...], ...] = ()
    video_size: int = 224  # whole frames for frame sampling / collage
    codec_share: float = 1.0  # video modes, drawn per sample: codec tokens / frame sampling / collage
    frames_share: float = 0.0
    collage_share: float = 0.0
    max_frames: int = 8  # frames used by frame sampling and collage
    shuffle_buffer: int = 1000  # samples per DataLoader worker
    # false: exact epochs (a seeded shard permutation per epoch; each set needs ranks x workers shards);
    # true: shards drawn with replacement, for sets with few shards
    resample: bool = False
    labels: str = ""  # bank version of a sidecar label set to read instead of cls.npy (shards.labels)
    max_bad_rate: float = 0.01  # skipped bad samples allowed (after 10) before the run stops
    workers: int = 2  # DataLoader worker processes per rank decoding ahead; 0 decodes in the trainer
    prefetch: int = 2  # micro-batches each worker keeps ready


@dataclass(frozen=True)
class HeadConfig:
    name: str = "image"
    modalities: tuple[str, ...] = ("image",)  # which sample modalities this head scores
    num_classes: int = 1000
    weight: float = 1.0
    bank: str = ""  # .npy of centroids (num_classes, dim) to initialise the class centres
    bank_version: str = ""
    sample_rate: float = 0.1  # share of this rank's classes scored per step (positives always kept)
    margin: float = 0.3  # CosFace additive cosine margin
    scale: float = 64.0
    filter: float = 0.75  # negatives with cosine above this are zeroed
    draw: int = 8  # labels drawn per sample per step out of its top-k
    # cls: concept ids from cls.npy (or a sidecar label set); words: OCR vocabulary ids from
    # words.npy (0-100 per page; a page without words adds nothing to this head's loss)
    labels: Literal["cls", "words"] = "cls"


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    min_lr_ratio: float = 0.0
    warmup_steps: int = 0
    decay: Literal["cosine", "poly"] = "cosine"
    power: float = 2.0  # for poly decay
    weight_decay: float = 0.05
    betas: tuple[float, ...] = (0.9, 0.999)
    eps: float = 1e-8
    clip: float = 5.0  # grad-norm clip, applied to the backbone and to the heads separately
    head_lr_scale: float = 1.0
    head_weight_decay: float = 0.05
    # sampled: AdamW moves only the centre rows each step scored (their moments and decay too; rows not
    # scored wait, as in Partial FC v1), never making a full-size gradient; dense: every row, every step,
    # as the reference's AdamW does (at 2M classes a large share of the step: tests/benchmarks/RESULTS.md)
    head_update: Literal["sampled", "dense"] = "sampled"
    # the sampled update's AdamW moments: bf16 stores them with stochastic rounding (unbiased, as torchao's
    # bf16 AdamW), 8 instead of 12 bytes per centre entry and 18 instead of 26 moved per scored entry a step
    head_moments: Literal["fp32", "bf16"] = "fp32"


@dataclass(frozen=True)
class ParallelConfig:
    mode: Literal["ddp", "fsdp"] = "ddp"
    compile: bool = False
    activation_checkpointing: bool = False
    dtype: Literal["bf16", "fp32"] = "bf16"  # autocast dtype; master weights stay fp32
    # FSDP2: free each block's gathered weights after forward and gather them again in backward;
    # false keeps them (more memory, one all-gather less per block and step)
    fsdp_reshard: bool = True


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    out_dir: str = "out/train"
    seed: int = 0
    steps: int = 100  # optimizer steps
    accum: int = 1  # micro-batches per optimizer step
    log_every: int = 1
    save_every: int = 0  # 0: only at the end
    keep_last: int = 3
    init_from: str = ""  # checkpoint folder of an earlier stage: weights (and matching heads) only
    max_bad_steps: int = 20  # consecutive steps with non-finite gradients (skipped) before the run stops
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    heads: tuple[HeadConfig, ...] = (HeadConfig(),)
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def __post_init__(self):
        patch = self.model.patch
        sizes = [self.data.image_size, self.data.video_size] + [s[1] for s in self.data.resolution_schedule]
        bad = [s for s in sizes if s % patch]
        if bad:
            raise ValueError(f"image sizes {bad} are not divisible by the patch {patch}")
        if any(len(s) != 2 for s in self.data.resolution_schedule):
            raise ValueError("data.resolution_schedule holds [from_step, size] pairs")
        names = [h.name for h in self.heads]
        if len(set(names)) != len(names):
            raise ValueError(f"head names repeat: {names}")
        if self.optim.head_moments == "bf16" and self.optim.head_update == "dense":
            raise ValueError(
                'optim.head_moments = "bf16" needs optim.head_update = "sampled" (the dense update is torch\'s AdamW)'
            )
        mods = [m for h in self.heads for m in h.modalities]
        if len(set(mods)) != len(mods):
            raise ValueError(f"a modality feeds two heads: {mods}")
        shares = (self.data.codec_share, self.data.frames_share, self.data.collage_share)
        if min(shares) < 0 or sum(shares) <= 0:
            raise ValueError(f"video mode shares must be >= 0 with a positive sum, got {shares}")
