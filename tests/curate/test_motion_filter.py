"""motion_filter: still clips dropped, moving clips kept, thresholds named in the ledger reason."""

from curate.demo.synthetic_video import make_clip
from curate.stage import new_rows, run_in_process
from curate.stages.codec import CodecPatchify
from curate.stages.filters import MotionFilter


def _rows(paths):
    return new_rows([{"key": f"k{i}", "uri": str(p), "modality": "video", "partition": 0} for i, p in enumerate(paths)])


def test_still_clip_is_dropped_and_moving_clips_kept_on_real_encodes(tmp_path):
    clips = {"still": {"static": True}, "moving": {"objects": 2}, "moving_pan": {"objects": 2, "pan": (2.0, 0.5)}}
    paths = []
    for name, kw in clips.items():
        paths.append(tmp_path / f"{name}.mp4")
        make_clip(paths[-1], size=128, frames=32, seed=1, **kw)
    stages = [CodecPatchify(size=128, frames=32), MotionFilter(min_motion_px=0.5)]
    out = run_in_process(stages, _rows(paths))
    status = dict(zip(clips, zip(out["status"], out["reason"], out["detail"], strict=True), strict=True))
    assert status["still"][:2] == ("dropped", "motion_filter/static") and "motion p95 0 px/frame" in status["still"][2]
    assert status["moving"][0] == "live" and status["moving_pan"][0] == "live"


def test_thresholds_and_a_missing_codec_stage():
    def row(motion, residual, selection="top_k"):
        codec = {"selection": selection, "saliency": {"motion_p95_px": motion, "residual_p95": residual}}
        return {"key": "k", "uri": "u", "modality": "video", "partition": 0, "meta": {"codec": codec}}

    f = MotionFilter(min_motion_px=1.0, max_motion_px=20.0, min_residual=2.0)
    assert f.process_row(row(5.0, 10.0)).get("keep", True)
    for (motion, residual), code in {
        (0.5, 10.0): "too_little_motion",
        (30.0, 10.0): "too_much_motion",
        (5.0, 1.0): "too_little_residual",
    }.items():
        out = f.process_row(row(motion, residual))
        assert out["keep"] is False and out["drop_reason"].startswith(code + ":")
    assert MotionFilter(drop_static=False).process_row(row(0.0, 0.0, "static_fallback")).get("keep", True)
    out = run_in_process([MotionFilter()], _rows(["clip.mp4"]))
    assert out["status"][0] == "failed" and "put it after codec_patchify" in out["detail"][0]
