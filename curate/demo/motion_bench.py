"""A generated, labelled video benchmark whose class depends on motion, plus a static-appearance control.

Two tasks of 4 balanced classes each, with train and test splits and an unlabelled pretraining
split, all drawn from one seed, encoded by real libx264 (yuv420p, 24 fps, GOP 16 like the paper,
single-threaded so the bytes are reproducible), with the ground truth written beside the clips.

``motion``: the class is the shape of the path a small *target* takes over the clip:

* ``line``: straight across;
* ``return``: straight out and straight back to the start;
* ``loop``: once round an ellipse (or circle), back to the start;
* ``zigzag``: a straight overall drift with 3 or 4 perpendicular reversals (a triangle wave).

The target is a disc of diameter 0.09 x size (11.5 px at 128 px: less than one 16 px patch),
saturated red with a white rim. Three *distractors* of the same size and rim but other fill
colours (green, blue, yellow, cyan) move on paths drawn from the same four shapes at random, so
motion alone does not say which object is the target (its look does) and the path shape alone
does not say which object's path is the class (the target's does). Paths are in frame (screen)
coordinates, traversed at constant speed from the first frame to the last, and stay inside the
frame. The background is a photograph or texture from scikit-image (one of 13, cropped at random,
sometimes halved, rotated by quarter turns, mirrored, desaturated so that no background colour
is as saturated as an object's), panned by a random camera velocity (zero in a quarter of clips).

Why one frame says (almost) nothing about the class:

1. Every object looks the same in every class, so appearance carries no class information.
2. Each path is a shape that is randomly rotated (uniform angle), mirrored, sized and then placed
   uniformly among all the placements that keep it inside the frame. A half turn maps each
   placement onto another equally likely one, so at every frame the expected target position is
   the frame's centre, in every class; and since the room for placement (0.86 x size less the
   path's extent) is larger than the paths, the position at any one frame is a broad blob for
   every class. What is left is second order: a long straight path's middle lies nearer the
   frame's centre than a small loop's points do. A Bayes classifier on the exact target position
   at the most informative frame reaches about 0.35 (chance 0.25); tests/curate/test_motion_bench
   checks the means and this bound.
3. Every shape's path length comes from the same range (0.45-0.85 x size; a zigzag's is stretched
   by 6-25 %, see 4), traversed at constant speed, so speed is a weak cue (a classifier on the
   mean speed alone: about 0.31).
4. Endpoints do not separate all classes: ``line`` and ``zigzag`` both end far from the start
   (0.45-0.85 and 0.36-0.77 x size), ``return`` and ``loop`` both end exactly at it. The first
   and last frames (what two uniformly sampled whole frames show) can at best tell these two
   pairs apart (and line from zigzag a little, by distance: about 0.63 for that pair); the rest
   needs the motion in between.

``static`` (control): the class is the shape of one large object (``square``, ``disc``,
``triangle``, ``cross``; magenta with a white rim, 0.26-0.34 x size, random position and
rotation) painted into the background, so it moves exactly with the camera pan (it is static in
the scene: no codec motion relative to the background), while 2-3 small discs of the motion
task's look move on random paths: the motion is not where the class is.

``pretrain``: unlabelled clips alternating between the two generators, with random classes.

Layout of ``OUT``: ``motion/{train,test}/motion-train-0007.mp4``..., ``static/{train,test}/...``,
``pretrain/pretrain-0000.mp4``...; ``labels.csv`` (``task,split,name,label,class_name``;
pretrain rows: task and split ``pretrain``, label -1, empty class name); ``truth.json``
(``meta`` and, per clip name, task, split, label, class name, path, camera pan in px/frame and
the camera's per-frame integer position, the target's per-frame centre (x, y) and box (x0, y0,
x1, y1), the distractors' per-frame centres, path shapes and colours, and the clip's seed).
Coordinates are pixels, pixel (column x, row y) centred at (x, y).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

MOTION_CLASSES = ("line", "return", "loop", "zigzag")
STATIC_CLASSES = ("square", "disc", "triangle", "cross")
TASKS = {"motion": MOTION_CLASSES, "static": STATIC_CLASSES}
FPS = 24
GOP = 16

TARGET_COLOUR = (230, 20, 20)  # saturated red
DISTRACTOR_COLOURS = ((20, 190, 40), (30, 70, 240), (240, 215, 20), (20, 200, 220))  # green, blue, yellow, cyan
RIM_COLOUR = (255, 255, 255)
STATIC_COLOUR = (210, 40, 210)  # magenta
SPRITE_DIAMETER = 0.09  # x size: the target and every distractor
STATIC_SIZE = (0.26, 0.34)  # x size: the static task's object
PATH_LENGTH = (0.45, 0.85)  # x size: every path, whatever its shape
PAN_TRAVEL = (0.1, 0.45)  # x size: camera travel over the whole clip, when it moves
PAN_ZERO = 0.25  # share of clips with a still camera
BACKGROUNDS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",
    "brick",
    "gravel",
    "grass",
    "moon",
    "coins",
    "clock",
    "immunohistochemistry",
    "cell",
)

_TASK_CODE = {"motion": 0, "static": 1, "pretrain": 2}
_SPLIT_CODE = {"train": 0, "test": 1, "pretrain": 2}


# --------------------------------------------------------------------------------------- geometry


def sprite_radius(size: int) -> float:
    return SPRITE_DIAMETER * size / 2


def _rim(size: int) -> float:
    return max(1.25, 0.011 * size)


def _margin(size: int) -> float:
    """Closest a small object's centre comes to the frame's edge (its whole drawing window fits)."""
    return sprite_radius(size) + 3


def _shape(kind: str, s: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """The path (N, 2) at phases ``s`` in [0, 1], in pixels, before rotation, mirroring and placement.

    Every shape is drawn with a path length from the same range (PATH_LENGTH x size), so the
    speed (constant along the path) says (almost) nothing about the class; a zigzag's length is
    stretched by 1/sqrt(cos(tilt)) (1.06-1.25) so that its end-to-end drift stays closer to a line's.
    """
    length = rng.uniform(*PATH_LENGTH) * size
    zero = np.zeros_like(s)
    if kind == "line":
        return np.stack([length * s, zero], -1)
    if kind == "return":
        return np.stack([length / 2 * (1 - np.abs(1 - 2 * s)), zero], -1)
    if kind == "loop":  # an ellipse of aspect 0.6-1 whose perimeter (Ramanujan's) is the length
        ratio = rng.uniform(0.6, 1.0)
        h = ((1 - ratio) / (1 + ratio)) ** 2
        a = length / (np.pi * (1 + ratio) * (1 + 3 * h / (10 + np.sqrt(4 - 3 * h))))
        phase = rng.uniform(0, 2 * np.pi) + 2 * np.pi * s
        return np.stack([a * np.cos(phase), ratio * a * np.sin(phase)], -1)
    if kind == "zigzag":  # a triangle wave: legs 35-50 degrees off the drift, 3 or 4 reversals
        reversals = int(rng.integers(3, 5))
        tilt = np.deg2rad(rng.uniform(35, 50))
        length /= np.sqrt(np.cos(tilt))  # splits the difference: drift and speed both near a line's
        amplitude = length * np.sin(tilt) / (2 * reversals)
        across = amplitude * (2 / np.pi) * np.arcsin(np.clip(np.sin(np.pi * reversals * s), -1, 1))
        return np.stack([length * np.cos(tilt) * s, across], -1)
    raise ValueError(f"unknown path shape {kind!r}; expected one of {MOTION_CLASSES}")


def trajectory(kind: str, rng: np.random.Generator, *, frames: int = 64, size: int = 128) -> np.ndarray:
    """Per-frame centres (frames, 2) as (x, y) pixels of a path of shape ``kind`` (see the module doc).

    Constant speed along the path over the whole clip; random extent, rotation, mirroring and a
    uniform random placement among those that keep the small object inside the frame.
    """
    s = np.linspace(0.0, 1.0, frames)
    path = _shape(kind, s, rng, size)
    path[:, 1] *= rng.choice([-1.0, 1.0])
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    path = path @ rot.T
    lo, hi = path.min(0), path.max(0)
    room = size - 2 * _margin(size)
    if (hi - lo).max() > room:  # only at small sizes: shrink to fit rather than leave the frame
        path *= room / (hi - lo).max()
        lo, hi = path.min(0), path.max(0)
    low = _margin(size) - lo
    return path + rng.uniform(low, np.maximum(low, size - _margin(size) - hi))


# --------------------------------------------------------------------------------------- rendering


@functools.cache
def _photo(name: str) -> np.ndarray:
    """One background: RGB uint8, desaturated and slightly compressed in contrast."""
    import skimage.data

    img = getattr(skimage.data, name)().astype(np.float32)
    img = np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img[..., :3]
    grey = img.mean(-1, keepdims=True)
    return (16 + 0.85 * (grey + 0.4 * (img - grey))).astype(np.uint8)


def _pan(rng: np.random.Generator, size: int, frames: int) -> np.ndarray:
    """Camera velocity (dx, dy) in px/frame: zero in PAN_ZERO of clips, else a random direction."""
    if rng.random() < PAN_ZERO:
        return np.zeros(2)
    travel, angle = rng.uniform(*PAN_TRAVEL) * size, rng.uniform(0, 2 * np.pi)
    return travel / (frames - 1) * np.array([np.cos(angle), np.sin(angle)])


def _background(rng: np.random.Generator, size: int, frames: int, pan: np.ndarray):
    """A canvas covering the whole pan and each frame's integer offset into it (like make_clip)."""
    photo = _photo(BACKGROUNDS[rng.integers(len(BACKGROUNDS))])
    photo = np.rot90(photo, int(rng.integers(4)))
    if rng.random() < 0.5:
        photo = photo[:, ::-1]
    travel = np.abs(pan) * (frames - 1)
    need_h, need_w = size + int(np.ceil(travel[1])) + 1, size + int(np.ceil(travel[0])) + 1
    h, w = photo.shape[:2]
    if rng.random() < 0.5 and h >= 2 * need_h and w >= 2 * need_w:  # halved: more texture per frame
        photo = photo[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3)).astype(np.uint8)
        h, w = photo.shape[:2]
    photo = np.pad(photo, ((0, max(0, need_h - h)), (0, max(0, need_w - w)), (0, 0)), "reflect")
    y0 = rng.integers(photo.shape[0] - need_h + 1)
    x0 = rng.integers(photo.shape[1] - need_w + 1)
    canvas = photo[y0 : y0 + need_h, x0 : x0 + need_w].astype(np.float32)
    origin = np.where(pan >= 0, 0.0, travel)
    offsets = np.round(origin + pan * np.arange(frames)[:, None]).astype(int)  # (T, 2) as (x, y)
    return canvas, offsets


def _crop_frames(canvas: np.ndarray, offsets: np.ndarray, size: int) -> np.ndarray:
    video = np.empty((len(offsets), size, size, 3), np.float32)
    for t, (x, y) in enumerate(offsets):
        video[t] = canvas[y : y + size, x : x + size]
    return video


def _blend(region: np.ndarray, cover: np.ndarray, fill: np.ndarray, rim: float, sd: np.ndarray) -> np.ndarray:
    """Anti-aliased object from its signed distance ``sd`` (px, negative inside): fill with a white rim."""
    inner = np.clip(-0.5 - rim - sd, 0, 1)[..., None]
    colour = inner * np.asarray(fill, np.float32) + (1 - inner) * np.asarray(RIM_COLOUR, np.float32)
    return region * (1 - cover[..., None]) + cover[..., None] * colour


def _draw_discs(video: np.ndarray, centres: np.ndarray, colour) -> None:
    """Draw one small disc per frame at ``centres`` (T, 2) into ``video`` (T, H, W, 3) float32, in place."""
    t, size = video.shape[0], video.shape[1]
    r = sprite_radius(size)
    win = int(np.ceil(2 * r)) + 4
    corner = np.floor(centres - r).astype(int) - 1  # (T, 2) top-left pixel of each frame's window
    corner = np.clip(corner, 0, size - win)
    xs = corner[:, 0, None] + np.arange(win)  # (T, win)
    ys = corner[:, 1, None] + np.arange(win)
    dist = np.hypot((xs - centres[:, 0, None])[:, None, :], (ys - centres[:, 1, None])[:, :, None])
    sd = dist - r
    tt = np.arange(t)[:, None, None]
    region = video[tt, ys[:, :, None], xs[:, None, :]]
    video[tt, ys[:, :, None], xs[:, None, :]] = _blend(region, np.clip(0.5 - sd, 0, 1), colour, _rim(size), sd)


def _static_sd(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (in units of the half-size, negative inside) of a shape centred at 0."""
    if kind == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.82
    if kind == "disc":
        return np.hypot(u, v) - 0.95
    if kind == "triangle":  # equilateral, circumradius 1 (inradius 0.5)
        normals = [(np.cos(a), np.sin(a)) for a in np.pi / 2 + 2 * np.pi / 3 * np.arange(3)]
        return np.max([u * nx + v * ny for nx, ny in normals], axis=0) - 0.5
    if kind == "cross":
        arm = np.maximum(np.abs(u) - 0.3, np.abs(v) - 0.95)
        bar = np.maximum(np.abs(v) - 0.3, np.abs(u) - 0.95)
        return np.minimum(arm, bar)
    raise ValueError(f"unknown static shape {kind!r}; expected one of {STATIC_CLASSES}")


def _paint_static(canvas: np.ndarray, kind: str, centre: np.ndarray, half: float, angle: float, size: int):
    """Paint the static object into the canvas (in place); return its pixel box (x0, y0, x1, y1) there."""
    reach = int(np.ceil(1.2 * half)) + 2  # every shape lies within 1.17 x half of its centre
    cx, cy = np.round(centre).astype(int)
    y0, x0 = max(0, cy - reach), max(0, cx - reach)  # the window, clipped to the canvas
    y1, x1 = min(canvas.shape[0], cy + reach + 1), min(canvas.shape[1], cx + reach + 1)
    ys, xs = np.mgrid[y0:y1, x0:x1]
    dx, dy = xs - centre[0], ys - centre[1]
    u = (np.cos(angle) * dx + np.sin(angle) * dy) / half
    v = (-np.sin(angle) * dx + np.cos(angle) * dy) / half
    sd = _static_sd(kind, u, v) * half
    cover = np.clip(0.5 - sd, 0, 1)
    canvas[y0:y1, x0:x1] = _blend(canvas[y0:y1, x0:x1], cover, STATIC_COLOUR, _rim(size), sd)
    inside = np.argwhere(cover >= 0.5)
    (top, left), (bottom, right) = inside.min(0), inside.max(0)
    return np.array([left + x0, top + y0, right + x0, bottom + y0], float)


def _round(a: np.ndarray) -> list:
    return np.round(np.asarray(a, float), 2).tolist()


def render(task: str, label: int, seed: int, *, size: int = 128, frames: int = 64) -> tuple[np.ndarray, dict]:
    """Render one clip of ``task`` with class index ``label``: (frames, size, size, 3) uint8 and its truth."""
    rng = np.random.default_rng(seed)
    pan = _pan(rng, size, frames)
    canvas, offsets = _background(rng, size, frames, pan)
    truth: dict = {
        "class_name": TASKS[task][label],
        "pan": np.round(pan, 6).tolist(),
        "camera": (offsets - offsets[0]).tolist(),  # per frame, integer px: the background moves by minus this
    }
    if task == "motion":
        video = _crop_frames(canvas, offsets, size)
        target = trajectory(MOTION_CLASSES[label], rng, frames=frames, size=size)
        colours = rng.permutation(len(DISTRACTOR_COLOURS))[:3]
        distractors = []
        for c in colours:
            kind = MOTION_CLASSES[rng.integers(len(MOTION_CLASSES))]
            path = trajectory(kind, rng, frames=frames, size=size)
            _draw_discs(video, path, DISTRACTOR_COLOURS[c])
            distractors.append({"class_name": kind, "colour": list(DISTRACTOR_COLOURS[c]), "centre": _round(path)})
        _draw_discs(video, target, TARGET_COLOUR)  # on top: never hidden by a distractor
        r = sprite_radius(size)
        truth["target"] = {
            "colour": list(TARGET_COLOUR),
            "centre": _round(target),
            "box": _round(np.concatenate([target - r, target + r], 1)),
        }
    elif task == "static":
        kind = STATIC_CLASSES[label]
        half = rng.uniform(*STATIC_SIZE) * size / 2
        angle = rng.uniform(0, 2 * np.pi)
        shift = offsets - offsets[0]  # the background's displacement: screen = scene - shift
        bound = 1.17 * half + _rim(size)  # reach of any shape at any rotation, plus a pixel
        lo, hi = bound + 1 + shift.max(0), size - 2 - bound + shift.min(0)
        screen0 = rng.uniform(lo, np.maximum(hi, lo))  # where it is in frame 0
        box = _paint_static(canvas, kind, screen0 + offsets[0], half, angle, size) - np.tile(offsets[0], 2)
        video = _crop_frames(canvas, offsets, size)
        distractors = []
        palette = (TARGET_COLOUR, *DISTRACTOR_COLOURS)
        for c in rng.permutation(len(palette))[: rng.integers(2, 4)]:
            path_kind = MOTION_CLASSES[rng.integers(len(MOTION_CLASSES))]
            path = trajectory(path_kind, rng, frames=frames, size=size)
            _draw_discs(video, path, palette[c])
            distractors.append({"class_name": path_kind, "colour": list(palette[c]), "centre": _round(path)})
        truth["target"] = {
            "colour": list(STATIC_COLOUR),
            "size": round(2 * half, 2),
            "angle": round(angle, 4),
            "centre": _round(screen0 - shift),
            "box": _round(box - np.tile(shift, 2)),
        }
    else:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    truth["distractors"] = distractors
    return np.clip(np.rint(video), 0, 255).astype(np.uint8), truth


def make_clip(path: str | Path, task: str, label: int, seed: int, *, size: int = 128, frames: int = 64) -> dict:
    """Render one clip and encode it to ``path`` (libx264, GOP 16, one thread); return its truth."""
    from curate.demo.synthetic_video import write_video

    video, truth = render(task, label, seed, size=size, frames=frames)
    write_video(path, video, codec="h264", fps=FPS, gop=GOP, threads=1)
    return truth


# --------------------------------------------------------------------------------------- the benchmark


def _clip_seed(seed: int, task: str, split: str, index: int) -> int:
    return int(np.random.SeedSequence([seed, _TASK_CODE[task], _SPLIT_CODE[split], index]).generate_state(1)[0])


def plan(
    *,
    seed: int = 0,
    train: int = 64,
    test: int = 32,
    pretrain: int = 48,
    classes: dict[str, tuple[str, ...]] | None = None,
) -> list[dict]:
    """Every clip of the benchmark (no rendering): name, relative path, task, split, label, seed, generator."""
    classes = classes or TASKS
    jobs = []
    for task in TASKS:
        ids = [TASKS[task].index(c) for c in classes.get(task, TASKS[task])]
        for split, n in (("train", train), ("test", test)):
            rng = np.random.default_rng([seed, _TASK_CODE[task], _SPLIT_CODE[split]])
            labels = rng.permutation(np.resize(ids, n)) if n else []
            for i, label in enumerate(labels):
                name = f"{task}-{split}-{i:04d}.mp4"
                jobs.append(
                    {
                        "name": name,
                        "path": f"{task}/{split}/{name}",
                        "task": task,
                        "split": split,
                        "label": int(label),
                        "generator": task,
                        "generator_label": int(label),
                        "seed": _clip_seed(seed, task, split, i),
                    }
                )
    for i in range(pretrain):
        generator = ("motion", "static")[i % 2]
        clip_seed = _clip_seed(seed, "pretrain", "pretrain", i)
        ids = [TASKS[generator].index(c) for c in classes.get(generator, TASKS[generator])]
        label = ids[np.random.default_rng([clip_seed, 1]).integers(len(ids))]
        name = f"pretrain-{i:04d}.mp4"
        jobs.append(
            {
                "name": name,
                "path": f"pretrain/{name}",
                "task": "pretrain",
                "split": "pretrain",
                "label": -1,
                "generator": generator,
                "generator_label": int(label),
                "seed": clip_seed,
            }
        )
    return jobs


def _make(job: dict, out: str, size: int, frames: int) -> dict:
    truth = make_clip(
        Path(out, job["path"]), job["generator"], job["generator_label"], job["seed"], size=size, frames=frames
    )
    labelled = job["label"] >= 0
    return {
        "task": job["task"],
        "split": job["split"],
        "label": job["label"],
        "class_name": truth["class_name"] if labelled else "",
        "path": job["path"],
        "generator": job["generator"],
        "generator_class": truth["class_name"],
        "seed": job["seed"],
        **{k: v for k, v in truth.items() if k != "class_name"},
    }


def parse_classes(names: list[str] | None) -> dict[str, tuple[str, ...]]:
    """Split class names over the tasks; a task none of whose classes is named keeps all of them."""
    if not names:
        return dict(TASKS)
    unknown = sorted(set(names) - set(MOTION_CLASSES) - set(STATIC_CLASSES))
    if unknown:
        raise ValueError(f"unknown classes {unknown}; motion: {MOTION_CLASSES}, static: {STATIC_CLASSES}")
    out = {}
    for task, all_names in TASKS.items():
        chosen = tuple(c for c in all_names if c in names)
        if len(chosen) == 1:
            raise ValueError(f"task {task!r} needs at least 2 classes, got {chosen}")
        out[task] = chosen or all_names
    return out


def build(
    out_dir: str | Path,
    *,
    seed: int = 0,
    size: int = 128,
    frames: int = 64,
    train: int = 64,
    test: int = 32,
    pretrain: int = 48,
    classes: list[str] | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> dict:
    """Generate the benchmark into ``out_dir``; return a summary (counts, classes, seconds).

    ``train``/``test`` are clips per task per split, balanced over the task's classes (exactly,
    when divisible); ``pretrain`` clips alternate between the generators. ``classes`` restricts
    the tasks to the named classes (labels keep their index in MOTION_CLASSES / STATIC_CLASSES).
    ``workers`` processes encode in parallel (default: up to 2 CPU cores); the output does not
    depend on it.
    """
    if size % 2 or size < 64:
        raise ValueError(f"size must be even and at least 64, got {size}")
    if frames < 16:
        raise ValueError(f"frames must be at least 16, got {frames}")
    started = time.perf_counter()
    out = Path(out_dir)
    chosen = parse_classes(classes)
    jobs = plan(seed=seed, train=train, test=test, pretrain=pretrain, classes=chosen)
    for job in jobs:
        Path(out, job["path"]).parent.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers or min(2, os.cpu_count() or 1), len(jobs) or 1))
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="motion-bench", unit="clip", disable=not progress)
    clips = {}
    if workers == 1:
        for job in jobs:
            clips[job["name"]] = _make(job, str(out), size, frames)
            bar.update()
    else:
        with ProcessPoolExecutor(workers) as pool:
            futures = [pool.submit(_make, job, str(out), size, frames) for job in jobs]
            for job, future in zip(jobs, futures, strict=True):
                clips[job["name"]] = future.result()
                bar.update()
    bar.close()

    with open(out / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "split", "name", "label", "class_name"])
        for name, clip in clips.items():
            writer.writerow([clip["task"], clip["split"], name, clip["label"], clip["class_name"]])
    meta = {
        "seed": seed,
        "size": size,
        "frames": frames,
        "fps": FPS,
        "gop": GOP,
        "encoder": "libx264 preset veryfast crf 23 yuv420p, keyint=min-keyint=16, scenecut=0, threads=1",
        "classes": {task: list(TASKS[task]) for task in TASKS},
        "used_classes": {task: list(chosen[task]) for task in TASKS},
        "sprite_diameter": round(SPRITE_DIAMETER * size, 2),
        "target_colour": list(TARGET_COLOUR),
        "distractor_colours": [list(c) for c in DISTRACTOR_COLOURS],
        "rim_colour": list(RIM_COLOUR),
        "static_colour": list(STATIC_COLOUR),
        "coordinates": "pixels; pixel (column x, row y) is centred at (x, y); box = (x0, y0, x1, y1)",
        "pan": "camera velocity (dx, dy) in px/frame: the background content moves by (-dx, -dy)",
        "camera": "per frame, the camera's integer position (x, y) relative to frame 0 (rounded pan x t)",
        "paths": "motion objects move in frame (screen) coordinates; the static object is fixed in the scene",
    }
    (out / "truth.json").write_text(json.dumps({"meta": meta, "clips": clips}, separators=(",", ":")))
    counts: dict[str, int] = {}
    for clip in clips.values():
        key = "pretrain" if clip["task"] == "pretrain" else f"{clip['task']}/{clip['split']}"
        counts[key] = counts.get(key, 0) + 1
    return {
        "out": str(out),
        "seed": seed,
        "size": size,
        "frames": frames,
        "clips": len(clips),
        "counts": counts,
        "classes": meta["used_classes"],
        "workers": workers,
        "seconds": round(time.perf_counter() - started, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m curate motion-bench",
        description="Generate a labelled, motion-sensitive video benchmark with known ground truth: task "
        "'motion' (class = the path shape of a small red target among 3 distractors: "
        f"{', '.join(MOTION_CLASSES)}), task 'static' (control; class = the shape of a large static "
        f"object: {', '.join(STATIC_CLASSES)}), and unlabelled 'pretrain' clips. H.264 mp4, 24 fps, GOP 16; "
        "the same seed gives the same clips.",
        epilog="Writes OUT_DIR/{motion,static}/{train,test}/*.mp4, OUT_DIR/pretrain/*.mp4, OUT_DIR/labels.csv "
        "(task,split,name,label,class_name) and OUT_DIR/truth.json (per clip: pan, target centre and box per "
        "frame, distractor centres, seed). See curate/demo/motion_bench.py for the design.",
    )
    parser.add_argument("out_dir", help="folder to write the benchmark into")
    parser.add_argument("--seed", type=int, default=0, help="benchmark seed (default 0)")
    parser.add_argument("--size", type=int, default=128, help="frame side in pixels (default 128)")
    parser.add_argument("--frames", type=int, default=64, help="frames per clip (default 64)")
    parser.add_argument("--train", type=int, default=64, help="training clips per task (default 64)")
    parser.add_argument("--test", type=int, default=32, help="test clips per task (default 32)")
    parser.add_argument("--pretrain", type=int, default=48, help="unlabelled clips, both generators (default 48)")
    parser.add_argument(
        "--classes",
        nargs="+",
        metavar="NAME",
        help="only these classes, given after OUT_DIR (each task keeps all its classes if none of them is "
        f"named; labels keep their full-list index): {' '.join(MOTION_CLASSES + STATIC_CLASSES)}",
    )
    parser.add_argument("--workers", type=int, help="encoding processes (default: up to 2; output is the same)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        summary = build(
            args.out_dir,
            seed=args.seed,
            size=args.size,
            frames=args.frames,
            train=args.train,
            test=args.test,
            pretrain=args.pretrain,
            classes=args.classes,
            workers=args.workers,
            progress=not args.quiet,
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(json.dumps(summary))
    return 0
