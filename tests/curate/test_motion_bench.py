"""The motion benchmark against its own ground truth: labels, pixels, path geometry, codec tokens."""

from __future__ import annotations

import csv
import json
from collections import Counter

import av
import numpy as np
import pytest

from curate.codec import PatchifyConfig, patchify
from curate.demo import motion_bench as mb

SIZE, FRAMES = 128, 32
SMALL = {"seed": 3, "size": SIZE, "frames": FRAMES, "train": 8, "test": 4, "pretrain": 4}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    summary = mb.build(out, workers=1, **SMALL)
    truth = json.loads((out / "truth.json").read_text())
    with open(out / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return out, summary, truth, rows


def _decode(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.int16)


def _colour_at(frame: np.ndarray, centre) -> np.ndarray:
    x, y = np.round(centre).astype(int)
    return frame[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3).mean(0)


def _clips(truth, task, split=None):
    return {n: c for n, c in truth["clips"].items() if c["task"] == task and split in (None, c["split"])}


# ------------------------------------------------------------------------------------------- layout, labels


def test_layout_labels_balanced_and_matching_truth(bench):
    out, summary, truth, rows = bench
    assert summary["counts"] == {
        "motion/train": 8,
        "motion/test": 4,
        "static/train": 8,
        "static/test": 4,
        "pretrain": 4,
    }
    assert list(rows[0]) == ["task", "split", "name", "label", "class_name"]
    names = [r["name"] for r in rows]
    assert len(set(names)) == len(names) == 28 == len(truth["clips"])
    for r in rows:
        clip = truth["clips"][r["name"]]
        assert (r["task"], r["split"], int(r["label"])) == (clip["task"], clip["split"], clip["label"])
        assert r["class_name"] == clip["class_name"]
        if r["task"] == "pretrain":
            assert r["split"] == "pretrain" and r["label"] == "-1" and r["class_name"] == ""
            assert (out / "pretrain" / r["name"]).is_file() and r["name"].startswith("pretrain-")
            assert clip["generator_class"] in mb.TASKS[clip["generator"]]
        else:
            assert (out / r["task"] / r["split"] / r["name"]).is_file()
            assert r["name"].startswith(f"{r['task']}-{r['split']}-")
            assert mb.TASKS[r["task"]][int(r["label"])] == r["class_name"]
    for task in mb.TASKS:
        for split, n in (("train", 8), ("test", 4)):
            counts = Counter(r["class_name"] for r in rows if (r["task"], r["split"]) == (task, split))
            assert counts == dict.fromkeys(mb.TASKS[task], n // 4)
    assert Counter(c["generator"] for c in _clips(truth, "pretrain").values()) == {"motion": 2, "static": 2}
    assert truth["meta"]["gop"] == 16 and truth["meta"]["fps"] == 24


def test_clips_are_h264_with_the_papers_gop(bench):
    out, _, truth, _ = bench
    clip = next(iter(_clips(truth, "motion").values()))
    with av.open(str(out / clip["path"])) as c:
        stream = c.streams.video[0]
        assert (stream.codec_context.name, stream.format.name) == ("h264", "yuv420p")
        assert (stream.width, stream.height, float(stream.average_rate)) == (SIZE, SIZE, 24.0)
        kinds = [av.video.frame.PictureType(f.pict_type).name for f in c.decode(video=0)]
    assert len(kinds) == FRAMES and [i for i, k in enumerate(kinds) if k == "I"] == [0, 16]


# ------------------------------------------------------------------------------------------- pixels


def test_decoded_objects_are_where_the_truth_says(bench):
    out, _, truth, _ = bench
    palette = np.array([mb.TARGET_COLOUR, *mb.DISTRACTOR_COLOURS])  # index 0: the target's
    r = mb.sprite_radius(SIZE)
    for clip in _clips(truth, "motion").values():
        video = _decode(out / clip["path"])
        centres = np.array(clip["target"]["centre"])
        for t in (0, 9, 20, FRAMES - 1):
            seen = _colour_at(video[t], centres[t])  # the target is drawn on top: always visible
            assert np.abs(seen - palette).sum(1).argmin() == 0 and seen[0] - seen[1:].max() > 80, (t, seen)
            for d in clip["distractors"]:  # each distractor shows its own colour, unless covered
                c = np.array(d["centre"][t])
                covering = [o["centre"][t] for o in clip["distractors"] if o is not d] + [centres[t].tolist()]
                if min(np.hypot(*(c - np.array(o))) for o in covering) > 2 * r + 2:
                    seen = _colour_at(video[t], c)  # small discs lose some saturation to yuv420p
                    assert palette[np.abs(seen - palette).sum(1).argmin()].tolist() == d["colour"], (t, seen)


def test_static_object_stays_put_in_the_scene(bench):
    out, _, truth, _ = bench
    colour = np.array(mb.STATIC_COLOUR)
    r = mb.sprite_radius(SIZE)
    for clip in _clips(truth, "static").values():
        centre, box = np.array(clip["target"]["centre"]), np.array(clip["target"]["box"])
        camera, pan = np.array(clip["camera"]), np.array(clip["pan"])
        shift = centre - centre[0]  # on screen it moves only as the background does
        assert np.allclose(shift, -camera, atol=0.011) and np.allclose(box - box[0], np.tile(-camera, 2))
        assert np.abs(camera - pan * np.arange(FRAMES)[:, None]).max() <= 1.0
        if not pan.any():
            assert not shift.any()
        assert (box[:, :2] >= 0).all() and (box[:, 2:] <= SIZE - 1).all()  # whole object in frame throughout
        video = _decode(out / clip["path"])
        yy, xx = np.mgrid[:SIZE, :SIZE]
        magenta, hidden = {}, {}
        for t in (0, FRAMES - 1):  # the magenta pixels are those of the truth box
            magenta[t] = np.abs(video[t] - colour).max(-1) < 60
            hidden[t] = np.any(
                [
                    (xx - d["centre"][t][0]) ** 2 + (yy - d["centre"][t][1]) ** 2 < (r + 2) ** 2
                    for d in clip["distractors"]
                ],
                0,
            )
            x0, y0, x1, y1 = box[t]
            in_box = (xx >= x0 - 1) & (xx <= x1 + 1) & (yy >= y0 - 1) & (yy <= y1 + 1)
            assert (magenta[t] & in_box).sum() > 0.99 * magenta[t].sum()
            assert (magenta[t] | hidden[t])[in_box].mean() > 0.15
        # the same magenta pixels in the first and the last frame after the background's shift, away
        # from the distractors (drawn over it)
        dx, dy = -camera[-1]
        first, last = np.roll(magenta[0], (dy, dx), (0, 1)), magenta[FRAMES - 1]
        visible = ~(np.roll(hidden[0], (dy, dx), (0, 1)) | hidden[FRAMES - 1])
        assert (first & last & visible).sum() / ((first | last) & visible).sum() > 0.75  # ~0 if it moved


# ------------------------------------------------------------------------------------------- geometry


def _turns(path: np.ndarray, axis: np.ndarray) -> int:
    """How often the velocity's component along ``axis`` changes sign (ignoring tiny steps)."""
    v = np.diff(path, axis=0) @ axis
    signs = np.sign(v[np.abs(v) > 0.05])  # truth is rounded to 0.01 px
    return int((signs[1:] != signs[:-1]).sum())


def _check_geometry(kind: str, path: np.ndarray, size: int) -> None:
    start, end = path[0], path[-1]
    r = mb.sprite_radius(size)
    assert (path >= r).all() and (path <= size - 1 - r).all()  # the whole object stays in frame
    chord = end - start
    reach = np.linalg.norm(path - start, axis=1).max()
    if kind in ("return", "loop"):
        assert np.linalg.norm(chord) < 0.5 and reach > 0.12 * size
    else:
        assert np.linalg.norm(chord) > 0.3 * size
        along = chord / np.linalg.norm(chord)
        across = np.array([-along[1], along[0]])
        off = (path - start) @ across
        if kind == "line":
            assert np.abs(off).max() < 0.5 and _turns(path, along) == 0 and _turns(path, across) == 0
        else:
            assert _turns(path, across) in (3, 4) and _turns(path, along) == 0 and np.abs(off).max() > 0.03 * size
    if kind == "return":  # straight out and back
        axis = (path[len(path) // 2] - start) / np.linalg.norm(path[len(path) // 2] - start)
        assert _turns(path, axis) == 1 and np.abs((path - start) @ np.array([-axis[1], axis[0]])).max() < 0.5
    if kind == "loop":  # a closed convex path: the heading turns once round, always the same way
        v = np.diff(path, axis=0)
        heading = np.arctan2(v[:, 1], v[:, 0])
        turn = np.angle(np.exp(1j * (np.roll(heading, -1) - heading)))
        assert abs(abs(turn.sum()) - 2 * np.pi) < 1e-3 and (np.sign(turn) == np.sign(turn.sum())).all()


def test_path_geometry_per_class(bench):
    _, _, truth, _ = bench
    for clip in _clips(truth, "motion").values():
        _check_geometry(clip["class_name"], np.array(clip["target"]["centre"]), SIZE)
        for d in clip["distractors"]:
            _check_geometry(d["class_name"], np.array(d["centre"]), SIZE)
    rng = np.random.default_rng(0)
    for kind in mb.MOTION_CLASSES:
        for size, frames in ((128, 64), (64, 16), (256, 64)):
            for _ in range(25):
                _check_geometry(kind, mb.trajectory(kind, rng, frames=frames, size=size), size)


def test_a_single_frame_carries_almost_no_class_information():
    n, frames, size = 1500, 64, 128
    rng = np.random.default_rng(1)
    paths = {
        k: np.stack([mb.trajectory(k, rng, frames=frames, size=size) for _ in range(2 * n)]) for k in mb.MOTION_CLASSES
    }
    bins = np.linspace(0, size, 9)
    for t in (0, 16, 32, 63):
        # every class's mean position is the frame's centre
        for k, p in paths.items():
            assert np.abs(p[:, t].mean(0) - (size - 1) / 2).max() < 0.03 * size, (k, t)
        # the best classifier of the exact position (8x8 histograms, half the samples) is near chance
        hist = np.stack([np.histogram2d(*paths[k][:n, t].T, bins=[bins, bins])[0] + 1 for k in mb.MOTION_CLASSES])
        correct = 0
        for i, k in enumerate(mb.MOTION_CLASSES):
            ix, iy = (np.clip(np.digitize(paths[k][n:, t, a], bins) - 1, 0, 7) for a in (0, 1))
            correct += (hist[:, ix, iy].argmax(0) == i).sum()
        assert correct / (4 * n) < 0.42, t
    # speeds overlap: every class's median speed lies within every other's 5-95 % range
    speed = {k: np.linalg.norm(np.diff(p, axis=1), axis=2).mean(1) for k, p in paths.items()}
    for a in speed.values():
        for b in speed.values():
            lo, hi = np.percentile(b, [5, 95])
            assert lo < np.median(a) < hi


# ------------------------------------------------------------------------------------------- codec tokens


def test_codec_tokens_cover_the_target(bench):
    out, _, truth, _ = bench
    r = mb.sprite_radius(SIZE)
    shares = []
    for clip in _clips(truth, "motion").values():
        result = patchify(str(out / clip["path"]), PatchifyConfig(size=SIZE, budget=0.125, frames=FRAMES))
        assert result.facts["signal"] == "codec_mvs" and len(result.positions) == round(0.125 * FRAMES * 64)
        kept = np.zeros((FRAMES, SIZE // 16, SIZE // 16), bool)
        kept[tuple(result.positions.T)] = True
        pixels = np.kron(kept, np.ones((16, 16), bool))  # (T, H, W): pixels inside kept patches
        yy, xx = np.mgrid[:SIZE, :SIZE]
        covered = []
        for t, (cx, cy) in enumerate(clip["target"]["centre"][1:], start=1):  # frame 0: no vectors yet
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
            covered.append(pixels[t][disc].mean() >= 0.5)
        shares.append(np.mean(covered))
    assert min(shares) >= 0.5 and np.mean(shares) >= 0.8, shares


# ------------------------------------------------------------------------------------------- determinism, CLI


def test_same_seed_same_clips_other_seed_other_clips(bench):
    out, _, truth, _ = bench
    jobs = mb.plan(seed=3, train=8, test=4, pretrain=4)
    assert {j["name"]: j["label"] for j in jobs} == {n: c["label"] for n, c in truth["clips"].items()}
    other = mb.plan(seed=4, train=8, test=4, pretrain=4)
    assert [j["label"] for j in other] != [j["label"] for j in jobs]
    assert not {j["seed"] for j in other} & {j["seed"] for j in jobs}
    job = next(j for j in jobs if j["task"] == "motion")
    again = mb.render(job["task"], job["label"], job["seed"], size=SIZE, frames=FRAMES)[1]
    assert again["target"] == truth["clips"][job["name"]]["target"]
    moved = mb.render(job["task"], job["label"], other[0]["seed"], size=SIZE, frames=FRAMES)[1]
    assert moved["target"]["centre"] != again["target"]["centre"]


def test_cli_writes_the_same_benchmark(bench, tmp_path, capsys):
    from curate.__main__ import main

    out, _, truth, _ = bench
    args = [f"--{k}={v}" for k, v in SMALL.items()]
    assert main(["motion-bench", str(tmp_path), *args, "--workers=2", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["clips"] == 28 and summary["workers"] == 2
    assert (tmp_path / "labels.csv").read_bytes() == (out / "labels.csv").read_bytes()
    assert json.loads((tmp_path / "truth.json").read_text()) == truth
    for clip in truth["clips"].values():  # single-threaded x264: the same bytes
        assert (tmp_path / clip["path"]).read_bytes() == (out / clip["path"]).read_bytes()
    with pytest.raises(SystemExit) as exit_:
        main(["motion-bench", "--help"])
    assert exit_.value.code == 0 and "zigzag" in capsys.readouterr().out


def test_class_subsets_and_bad_arguments(tmp_path):
    chosen = mb.parse_classes(["line", "loop"])
    assert chosen == {"motion": ("line", "loop"), "static": mb.STATIC_CLASSES}
    jobs = mb.plan(seed=0, train=8, test=4, pretrain=6, classes=chosen)
    motion = Counter(j["label"] for j in jobs if j["task"] == "motion")
    assert motion == {0: 6, 2: 6}  # labels keep their index in MOTION_CLASSES
    assert {j["generator_label"] for j in jobs if j["generator"] == "motion"} <= {0, 2}
    with pytest.raises(ValueError, match="unknown classes"):
        mb.parse_classes(["line", "spiral"])
    with pytest.raises(ValueError, match="at least 2"):
        mb.parse_classes(["line", "square", "disc"])
    with pytest.raises(ValueError, match="size"):
        mb.build(tmp_path, size=50)
    with pytest.raises(ValueError, match="unknown path shape"):
        mb.trajectory("spiral", np.random.default_rng(0))
