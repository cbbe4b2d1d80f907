"""Concept labels end to end: embed -> concepts (Ray global step) -> assign_concepts -> shards, then the
``concepts`` command refits and relabels the published set as a sidecar without touching a tar byte."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import webdataset as wds
from concepts_kit import NAME, jpeg, save_tiny

from curate.concepts import store
from curate.concepts.bank import load_bank
from curate.concepts.cli import main as concepts_main
from curate.concepts.kmeans import nearest
from curate.config import load_run
from curate.ledger import read_ledger
from curate.pipeline import run
from shards import labels as sidecar
from shards.tools import verify

RUN = """
name = "concepts-test"
partition_size = 8
executor = "local"
[output]
dir = "{out}"
[[sources]]
modality = "image"
uri = "{images}"
[[stages]]
name = "image_decode"
size = 64
[[stages]]
name = "embed"
model = "{model}"
model_config = "{config}"
weights = "{weights}"
modalities = ["image"]
[[stages]]
name = "concepts"
bank_name = "test-img"
k = 4
top_k = 3
iters = 10
init = "kmeans++"
"""

BANK = """
name = "relabel-test"
[source]
shards = "{out}/shards/image"
{embeddings}
[embed]
model = "{model}"
model_config = "{config}"
weights = "{weights}"
[kmeans]
bank_name = "test-img"
k = 5
top_k = 3
seed = 1
[labels]
{bank}
"""


def _tars(out) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*.tar"))}


@pytest.fixture(scope="module")
def curated(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("concepts-run")
    config, weights = save_tiny(root)
    images = root / "images"
    images.mkdir()
    for i in range(20):  # 3 partitions of up to 8
        (images / f"img{i:02d}.jpg").write_bytes(jpeg(i, size=(80, 72)))
    out = root / "out"
    (root / "run.toml").write_text(RUN.format(out=out, images=images, model=NAME, config=config, weights=weights))
    cfg, stages = load_run(str(root / "run.toml"))
    summary = run(cfg, stages, progress=False)
    return root, out, config, weights, summary


def test_run_labels_every_kept_image_with_the_fitted_bank(curated):
    root, out, *_ = curated
    result = json.loads((out / "_work" / "step0-concepts" / "result.json").read_text())
    meta, centroids = load_bank(result["bank"])
    assert meta["k"] == 4 and meta["embedding"]["model"] == NAME and result["random_weights"] is False
    folder = str(out / "_work" / "step0-concepts" / "embeddings")
    keys, emb = store.load_rows(folder, store.read_index(folder))
    expected = dict(zip(keys, nearest(emb.astype(np.float32), centroids, 3, device="cpu"), strict=True))
    samples = list(wds.WebDataset(sorted(str(p) for p in out.rglob("*.tar")), shardshuffle=False))
    assert len(samples) == curated[4]["kept"] == len(keys)
    for s in samples:
        ids = np.load(__import__("io").BytesIO(s["cls.npy"]))
        assert ids.dtype == np.int32 and ids.tolist() == expected[s["__key__"]].tolist()
        assert json.loads(s["json"])["concepts"]["bank"] == meta["version"]
    assert "concepts used as top-1" in (out / "report.html").read_text()  # the report reads the labels


def test_resumed_run_reuses_the_bank_instead_of_refitting(curated):
    root, out, *_ = curated
    result = out / "_work" / "step0-concepts" / "result.json"
    stamp, tars = result.stat().st_mtime_ns, _tars(out)
    (out / "_partitions" / "000001.json").unlink()  # lose one finished partition
    cfg, stages = load_run(str(root / "run.toml"))
    again = run(cfg, stages, progress=False)
    assert again["kept"] == curated[4]["kept"]
    assert result.stat().st_mtime_ns == stamp  # no refit: the partition is relabelled with the same bank
    assert _tars(out) == tars


def test_relabel_from_stored_embeddings_writes_a_sidecar_and_leaves_tars_alone(curated, capsys):
    root, out, config, weights, _ = curated
    before = _tars(out)
    embeddings = f'embeddings = "{out}/_work/step0-concepts/embeddings"'
    (root / "bank.toml").write_text(
        BANK.format(out=out, embeddings=embeddings, model=NAME, config=config, weights=weights, bank="")
    )
    assert concepts_main([str(root / "bank.toml"), "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert _tars(out) == before
    ledger = read_ledger(str(out))
    kept = set(ledger[(ledger["status"] == "kept") & (ledger["modality"] == "image")]["key"])
    set_folder = str(out / "shards" / "image")
    labels_meta = sidecar.read_labels_meta(set_folder, report["bank_version"])
    labelled = {}
    for part in labels_meta["parts"]:
        labelled.update(sidecar.shard_labels(set_folder, report["bank_version"], part["shard"]))
    assert set(labelled) == kept and report["samples"] == len(kept) and report["k"] == 5
    meta, centroids = load_bank(report["bank"])
    folder = report["embeddings"]
    keys, emb = store.load_rows(folder, store.read_index(folder))
    brute = np.argsort(((emb.astype(np.float32)[:, None] - centroids[None]) ** 2).sum(-1), 1, kind="stable")[:, :3]
    assert all(labelled[k].tolist() == b.tolist() for k, b in zip(keys, brute, strict=True))


def test_relabel_recomputes_embeddings_from_the_shards(curated, capsys):
    root, out, config, weights, _ = curated
    (root / "bank2.toml").write_text(
        BANK.format(out=out, embeddings="", model=NAME, config=config, weights=weights, bank="")
    )
    before = _tars(out)
    assert concepts_main([str(root / "bank2.toml"), "--quiet", "--kmeans.k=3"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert _tars(out) == before and report["k"] == 3
    index = store.read_index(report["embeddings"])
    assert index["rows"] == report["samples"] == curated[4]["kept"] and index["dim"] == 24
    checked = verify(str(out))  # banks, embeddings and labels beside the tars do not disturb the set
    assert checked["ok"] and checked["samples"] == curated[4]["kept"], checked["problems"]


def test_a_bank_of_another_width_is_refused(curated, capsys):
    root, out, config, weights, _ = curated
    result = json.loads((out / "_work" / "step0-concepts" / "result.json").read_text())
    keys, _ = store.load_rows(
        *(lambda f: (f, store.read_index(f)))(str(out / "_work" / "step0-concepts" / "embeddings"))
    )
    other = root / "other-model-embeddings"
    part = store.write_part(str(other), keys, ["image"] * len(keys), np.ones((len(keys), 7), np.float16))
    store.write_index(str(other), [part], {"model": "other"})
    (root / "bank3.toml").write_text(
        BANK.format(
            out=out,
            embeddings=f'embeddings = "{other}"',
            model=NAME,
            config=config,
            weights=weights,
            bank=f'bank = "{result["bank"]}"',
        )
    )
    assert concepts_main([str(root / "bank3.toml"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "24-d centroids" in err and "7-d" in err
    assert not (out / "shards" / "image" / "labels" / result["version"]).exists()
