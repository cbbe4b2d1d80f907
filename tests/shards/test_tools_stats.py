"""``python -m shards inspect|stats``: modality mix, label coverage, preview image, size statistics."""

from __future__ import annotations

import json

from PIL import Image
from shardkit import make_sample, write_set

from shards import format as fmt
from shards.__main__ import main as shards_main
from shards.labels import write_labels
from shards.tools import inspect, stats
from shards.writer import write_index, write_shard


def test_inspect_and_stats_report_mix_labels_sizes_and_draw_a_preview(tmp_path, capsys):
    write_set(tmp_path / "image", "image", 2, 3)
    write_set(tmp_path / "video", "video", 1, 2)
    unlabelled = {k: v for k, v in make_sample("ocr00_000", "ocr").items() if k != "cls.npy"}
    info = write_shard([unlabelled, make_sample("ocr00_001", "ocr")], str(tmp_path / "ocr" / "t_ocr-v1-000000.tar"))
    write_index(str(tmp_path / "ocr"), "t_ocr", "v1", [info], {"modality": "ocr"})
    write_labels(str(tmp_path / "image"), "bank-v2", {fmt.shard_name("t_image", "v1", 0): {"image00_000": [1, 2]}})

    report = inspect(str(tmp_path), samples=2)
    assert report["modality_mix"] == {"image": 6, "video": 2, "ocr": 2}
    by = {s["modality"]: s for s in report["sets"]}
    assert by["ocr"]["cls_coverage_first_shard"] == 0.5 and by["image"]["cls_coverage_first_shard"] == 1.0
    assert by["image"]["label_sets"] == {"bank-v2": round(1 / 6, 4)} and by["video"]["label_sets"] == {}

    preview = tmp_path / "preview.png"
    assert shards_main(["inspect", str(tmp_path), "--preview", str(preview)]) == 0
    assert "modality mix: image=6, ocr=2, video=2" in capsys.readouterr().out
    with Image.open(preview) as img:  # 3 sets x 3 samples, drawn at 3 inches x 100 dpi per cell
        assert img.size == (900, 900)

    s = stats(str(tmp_path))
    assert s["samples"] == 10 and s["modalities"] == {"image": 6, "video": 2, "ocr": 2}
    assert s["fields"]["pos.npy"]["samples"] == 2 and s["fields"]["cls.npy"]["samples"] == 9
    assert s["fields"]["txt"]["bytes"] == sum(len(make_sample(f"ocr00_00{i}", "ocr")["txt"]) for i in range(2))
    assert s["sample_bytes"]["min"] <= s["sample_bytes"]["p50"] <= s["sample_bytes"]["max"]
    assert shards_main(["stats", str(tmp_path / "video")]) == 0
    assert json.loads(capsys.readouterr().out)["modalities"] == {"video": 2}
