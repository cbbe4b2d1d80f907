"""One decode per picture for every stage of a chain that reads its pixels (issue 30), with the
same bits as decoding it in each stage; and which stages Ray runs as one task."""

from __future__ import annotations

import re

import numpy as np
import pytest
from concepts_kit import NAME, save_tiny

from curate import decodes
from curate.config import SourceConfig
from curate.ray_runner import chains
from curate.sources import list_inputs
from curate.stage import LIVE, TIMING, new_rows, run_in_process, to_rows
from curate.stages import build_stage


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    config, weights = save_tiny(tmp_path_factory.mktemp("tiny-clip"))
    specs = [
        {"name": "image_decode", "size": 160},
        {"name": "ocr_text"},
        {"name": "dedup_signatures"},
        {"name": "tiny_embed"},
        {"name": "embed", "model": NAME, "model_config": config, "weights": weights, "dtype": "float32"},
        {"name": "embed", "model": NAME, "model_config": config, "weights": weights, "modalities": ["ocr"]},
        {"name": "ocr"},
        {"name": "ocr_crop", "size": 96, "min_words": 1},
    ]
    return [build_stage(s) for s in specs]


@pytest.fixture(scope="module")
def inputs(demo_corpus):
    """The demo images (near-duplicate families, byte copies, a truncated and a non-image file) and three OCR pages."""
    sources = [SourceConfig(modality=m, uri=str(demo_corpus / f)) for m, f in (("image", "images"), ("ocr", "ocr"))]
    items, _ = list_inputs(sources, 16)
    pages = [it for it in items if it["modality"] == "ocr"][:3]
    return [it for it in items if it["modality"] == "image"] + pages


def _counted(stages, batch) -> tuple[list[dict], dict]:
    before = dict(decodes.COUNTS)
    rows = to_rows(run_in_process(stages, batch))
    for row in rows:
        row["meta"].pop(TIMING, None)
    return rows, {k: v - before.get(k, 0) for k, v in decodes.COUNTS.items()}


def test_a_chain_decodes_each_picture_once_with_the_bits_of_one_decode_per_stage(stages, inputs):
    shared, counts = _counted(stages, new_rows(inputs))
    batch, before = new_rows(inputs), decodes.COUNTS["pixels"]
    for stage in stages:  # each stage a chain of its own: every stage decodes what it reads, as before
        batch = run_in_process([stage], batch)
    alone = decodes.COUNTS["pixels"] - before
    apart, _ = _counted([], batch)
    assert shared == apart  # shard payloads, signatures, tiny and CLIP embeddings, OCR lines and crops

    live = [r for r in shared if r["status"] == LIVE]
    pages = {re.sub(r"-(r\d+|page)$", "", r["key"]) for r in live if r["modality"] == "ocr"}  # crops fan out
    images = {bytes(r["jpg"]) for r in live if r["modality"] == "image"}
    n_images = sum(r["modality"] == "image" for r in live)
    assert n_images + len(pages) == len(inputs) - 2 and len(images) < n_images  # byte copies curate to one jpg
    assert all(r["meta"]["dedup"]["phash"] and r["embedding"] and r["emb"] for r in live if r["modality"] == "image")
    assert all(r["jpg"] and r["meta"]["ocr"]["lines"] for r in live if r["modality"] == "ocr")
    # one source decode per input, and one at reading resolution per page that ocr and ocr_crop share;
    # one decode per distinct payload for dedup and embed alike; one reduced grey decode per image payload
    assert counts == {
        "source": len(inputs) - 2 + len(pages),
        "pixels": len(images) + len(pages),
        "reduced": len(images),
    }
    payloads = images | set(pages)
    assert alone >= 2 * len(payloads)  # stage by stage: dedup and embed each decode the same payload


def test_pictures_past_the_budget_are_decoded_again_not_held(inputs):
    decode = build_stage({"name": "image_decode", "size": 64})
    sign = build_stage({"name": "dedup_signatures", "minhash": False})
    batch = new_rows([it for it in inputs if it["modality"] == "image"])
    before = decodes.COUNTS["pixels"]
    with decodes.shared(budget=0):
        rows = to_rows(run_in_process([decode, sign], batch))
    live = {bytes(r["jpg"]) for r in rows if r["status"] == LIVE}
    assert decodes.COUNTS["pixels"] - before == len([r for r in rows if r["status"] == LIVE]) > len(live)


def test_ray_runs_consecutive_task_stages_as_one_task_and_every_actor_stage_alone(stages):
    names = [[s.name for s in chain] for chain in chains(stages)]
    assert names == [
        ["image_decode", "ocr_text", "dedup_signatures", "tiny_embed"],
        ["embed"],
        ["embed"],
        ["ocr"],
        ["ocr_crop"],
    ]


def test_a_shared_picture_comes_with_facts_of_its_own(demo_corpus):
    from curate.pictures import read_picture

    uri = str(demo_corpus / "images" / "coffee.jpg")
    with decodes.shared():
        (img, facts), (again, other) = read_picture(uri, {}), read_picture(uri, {})
        other["blake3"] = "changed"
        assert again is img and read_picture(uri, {})[1]["blake3"] == facts["blake3"] != "changed"
    assert np.array_equal(np.asarray(read_picture(uri, {})[0]), np.asarray(img))  # outside: decoded anew
