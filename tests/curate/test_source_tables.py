"""Table sources (parquet, CSV, JSONL): one input per row, relative URIs resolved against the table,
captions and kept columns carried into the shards unchanged, every bad row failed with its number,
and clip tables cutting videos to [start, end)."""

from __future__ import annotations

import csv
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from source_kit import photo

from curate.codec.patchify import PatchifyConfig, patchify_all
from curate.config import SourceConfig, load_run
from curate.demo.synthetic_video import make_clip
from curate.ledger import read_ledger
from curate.media import VideoError
from curate.pipeline import run
from curate.sources import list_inputs
from manifests import ManifestError
from shards import storage

ROWS = 240
BAD = {  # row number (1-based) -> the uri cell and the reason the row fails with
    7: (None, "source/no_uri"),
    50: ("", "source/no_uri"),
    99: ("   ", "source/no_uri"),
    120: ("https://example.com/a.jpg", "source/no_uri"),
    201: ("media/not_there.jpg", "image_decode/not_found"),
}


def _table_rows() -> list[dict]:
    rows = []
    for n in range(1, ROWS + 1):
        uri = BAD[n][0] if n in BAD else f"media/{n % 12:02d}.jpg"
        caption = None if n % 40 == 0 else f"row {n}, a caption with ünïcode"
        rows.append({"path": uri, "text": caption, "license": f"cc-by-{n % 3}", "score": n / 8, "drop_me": n})
    return rows


def _curate(tmp_path, name: str, source: str, stages: str = '[[stages]]\nname = "image_decode"\nsize = 48\n'):
    out = tmp_path / name
    manifest = tmp_path / f"{name}.toml"
    manifest.write_text(
        f'name = "{name}"\nexecutor = "local"\npartition_size = 64\n[output]\ndir = "{out}"\n'
        f"[[sources]]\n{source}\n{stages}"
    )
    cfg, stages_built = load_run(str(manifest))
    return run(cfg, stages_built, progress=False, report=False), out


def _samples(out, modality: str = "image") -> list[dict]:
    tars = sorted(str(p) for p in (out / "shards" / modality).glob("*.tar"))
    return list(wds.WebDataset(tars, shardshuffle=False))


def test_parquet_table_rows_and_their_failures(tmp_path):
    root = tmp_path / "corpus"
    (root / "media").mkdir(parents=True)
    for n in range(12):
        (root / "media" / f"{n:02d}.jpg").write_bytes(photo(n, size=40))
    rows = _table_rows()
    pq.write_table(pa.Table.from_pylist(rows), root / "table.parquet", row_group_size=100)
    summary, out = _curate(
        tmp_path,
        "parquet",
        f'modality = "image"\nformat = "parquet"\nuri = "{root / "table.parquet"}"\nuri_column = "path"\n'
        'caption_column = "text"\nkeep_columns = ["license", "score"]',
    )
    assert summary["inputs"] == ROWS == summary["kept"] + summary["dropped"] + summary["failed"]
    assert summary["failed"] == len(BAD) and summary["kept"] == ROWS - len(BAD)
    ledger = read_ledger(str(out))
    failed = ledger[ledger["status"] == "failed"]
    got = {json.loads(m)["provenance"]["row"]: r for m, r in zip(failed["meta"], failed["reason"], strict=True)}
    assert got == {n: reason for n, (_, reason) in BAD.items()}
    for detail, meta in zip(failed["detail"], failed["meta"], strict=True):
        n = json.loads(meta)["provenance"]["row"]
        assert n == 201 or f"table.parquet row {n}:" in detail  # 201 names a file that is not there
    samples = _samples(out)
    assert len(samples) == summary["kept"]
    for s in samples:
        meta = json.loads(s["json"])
        n = meta["provenance"]["row"]
        row = rows[n - 1]
        assert meta["provenance"]["row_group"] == (n - 1) // 100 and meta["provenance"]["row_in_group"] == (n - 1) % 100
        assert meta["source"] == str(root / row["path"])  # resolved against the table's folder
        assert meta["source_meta"] == {"license": row["license"], "score": row["score"]}  # kept columns only
        assert (s["txt"].decode() if "txt" in s else None) == row["text"]


def test_csv_table_on_s3_with_relative_paths(tmp_path, s3_server):
    s3 = storage.s3_client()
    s3.create_bucket(Bucket="coyo")
    for n in range(3):
        s3.put_object(Bucket="coyo", Key=f"data/media/{n}.png", Body=photo(n, size=40, fmt="PNG"))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["file", "caption", "source_site"])
    writer.writerow(["../media/0.png", "a plain caption", "a.example"])
    writer.writerow(["./../media/1.png", 'a caption, with a comma,\na newline and "quotes"', "b.example"])
    writer.writerow(["", "no file", "c.example"])
    writer.writerow(["s3://coyo/data/media/2.png", "absolute", "d.example"])
    text = buf.getvalue().encode()
    s3.put_object(Bucket="coyo", Key="data/tables/list.csv", Body=text)
    summary, out = _curate(
        tmp_path,
        "csv",
        'modality = "image"\nformat = "csv"\nuri = "s3://coyo/data/tables/"\nuri_column = "file"\n'
        'caption_column = "caption"\nkeep_columns = ["source_site"]',
    )
    assert (summary["inputs"], summary["kept"], summary["failed"]) == (4, 3, 1)
    samples = {json.loads(s["json"])["provenance"]["row"]: s for s in _samples(out)}
    assert sorted(samples) == [1, 2, 4]
    assert json.loads(samples[1]["json"])["source"] == "s3://coyo/data/media/0.png"
    assert json.loads(samples[2]["json"])["source"] == "s3://coyo/data/media/1.png"
    assert samples[2]["txt"].decode() == 'a caption, with a comma,\na newline and "quotes"'
    for s in samples.values():  # each row's byte offset points at its line in the CSV
        offset = json.loads(s["json"])["provenance"]["offset"]
        first = next(csv.reader(io.StringIO(text[offset:].decode())))
        assert first[1] == s["txt"].decode() and json.loads(s["json"])["source_meta"]["source_site"] == first[2]
    assert samples[4]["txt"] == b"absolute"
    ledger = read_ledger(str(out))
    bad = ledger[ledger["status"] == "failed"].iloc[0]
    assert bad["reason"] == "source/no_uri" and "list.csv row 3: file is '', not a URI" in bad["detail"]


def test_jsonl_table_lines_that_do_not_parse_fail_alone(tmp_path):
    (tmp_path / "a.jpg").write_bytes(photo(1, size=40))
    lines = [json.dumps({"url": "a.jpg", "caption": "one"}), "{not json", json.dumps(["a", "list"]), ""]
    lines += [json.dumps({"url": "a.jpg", "caption": "two"})]
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    src = SourceConfig(
        modality="image", uri=str(tmp_path / "rows.jsonl"), format="jsonl", uri_column="url", caption_column="caption"
    )
    items, passed = list_inputs([src], 8)
    errors = {it["meta"]["provenance"]["row"]: it.get("error") for it in items}
    assert not passed and sorted(errors) == [1, 2, 3, 5]
    assert errors[1] is None and errors[5] is None and errors[2][0] == errors[3][0] == "source/bad_row"
    assert "rows.jsonl row 3: not a JSON object" in errors[3][1]
    offsets = {it["meta"]["provenance"]["row"]: it["meta"]["provenance"]["offset"] for it in items}
    assert offsets[5] == sum(len(line) + 1 for line in lines[:4])
    assert len({it["key"] for it in items}) == 4  # two rows of one file: two inputs


@pytest.mark.parametrize(
    "extra, message",
    [
        ('format = "parquet"', "needs uri_column"),
        ('format = "webdataset"\ncaption_column = "c"', "only apply to table formats"),
        ('format = "csv"\nuri_column = "u"\nstart_column = "s"', "need modality = 'video'"),
        ('format = "tsv"', "'tsv' is not one of"),
        ('format = "jsonl"\nuri_column = "u"\nmodality = "ocr"', "OCR pages come as files or JSONL"),
    ],
)
def test_source_keys_are_validated_with_clear_errors(tmp_path, extra, message):
    manifest = tmp_path / "m.toml"
    modality = "" if "modality" in extra else 'modality = "image"\n'
    manifest.write_text(f'name = "x"\n[output]\ndir = "o"\n[[sources]]\n{modality}uri = "u"\n{extra}\n')
    with pytest.raises(ManifestError, match=message) as info:
        load_run(str(manifest))
    assert "sources" in str(info.value)


def test_clip_table_cuts_videos_by_time(tmp_path):
    """A clip table over generated videos (24 fps, a keyframe every 8 frames): each row becomes the
    frames shown in [start, end), its clips starting on the span's first frame, each following the one
    before (28 is inside a GOP), never past its end (44..47 of a is a 4-frame tail, left)."""
    media = tmp_path / "videos"
    media.mkdir()
    make_clip(media / "a.mp4", size=64, frames=96, fps=24, gop=8, seed=1)
    make_clip(media / "b.mp4", size=64, frames=48, fps=24, gop=8, seed=2)
    rows = [
        {"video": "videos/a.mp4", "start": 0.5, "end": 2.0, "caption": "a, first half"},  # frames 12..47
        {"video": "videos/a.mp4", "start": 3.0, "end": 9.0, "caption": "a, the end"},  # 72..95: the video ends
        {"video": "videos/b.mp4", "start": 0.0, "end": 1.0, "caption": "b"},  # 0..23
        {"video": "videos/b.mp4", "start": 1.5, "end": 1.0, "caption": "backwards"},  # end before start
        {"video": "videos/b.mp4", "start": 5.0, "end": 6.0, "caption": "after the end"},  # 0 s: dropped
        {"video": "videos/b.mp4", "start": "soon", "end": 1.0, "caption": "not a time"},
    ]
    (tmp_path / "clips.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary, out = _curate(
        tmp_path,
        "cliptable",
        f'modality = "video"\nformat = "jsonl"\nuri = "{tmp_path / "clips.jsonl"}"\nuri_column = "video"\n'
        'caption_column = "caption"\nstart_column = "start"\nend_column = "end"',
        '[[stages]]\nname = "video_probe"\n[[stages]]\nname = "duration"\nmin_seconds = 0.9\n'
        '[[stages]]\nname = "codec_patchify"\nframes = 16\nmin_frames = 8\nsize = 64\n',
    )
    assert summary["inputs"] == 6 == summary["kept"] + summary["dropped"] + summary["failed"]
    ledger = read_ledger(str(out))
    inputs = ledger[ledger["parent"].isna()]
    reason = {
        json.loads(m)["provenance"]["row"]: r if isinstance(r, str) else None
        for m, r in zip(inputs["meta"], inputs["reason"], strict=True)
    }
    assert reason == {
        1: None,
        2: None,
        3: None,
        4: "source/bad_time",
        5: "duration/duration",  # the span's part inside the video: 0 s
        6: "source/bad_time",
    }
    clips = {}
    for s in _samples(out, "video"):
        meta = json.loads(s["json"])
        clips.setdefault(meta["provenance"]["row"], []).append((meta["codec"]["frame_ids"], s["txt"].decode()))
    frames = {row: [(ids[0], ids[-1]) for ids, _ in sorted(got)] for row, got in clips.items()}
    assert frames == {1: [(12, 27), (28, 43)], 2: [(72, 87), (88, 95)], 3: [(0, 15), (16, 23)]}
    assert {row: {t for _, t in got} for row, got in clips.items()} == {
        1: {"a, first half"},
        2: {"a, the end"},
        3: {"b"},
    }
    with pytest.raises(VideoError, match=r"clip \[5, 6\) s holds no frame"):  # without a duration filter
        next(patchify_all(str(media / "b.mp4"), PatchifyConfig(frames=16, min_frames=8, size=64), span=(5.0, 6.0)))
