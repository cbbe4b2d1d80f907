"""A tiny open_clip model (built offline with pretrained=None) saved as a real checkpoint for the concept tests."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

TINY = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1},
}
NAME = "ovf-tiny-clip"


def save_tiny(folder) -> tuple[str, str]:
    """Write the config JSON and a checkpoint of a freshly initialised model; return their paths."""
    import open_clip
    import torch

    config = folder / f"{NAME}.json"
    config.write_text(json.dumps(TINY))
    open_clip.add_model_config(config)
    torch.manual_seed(1234)
    model = open_clip.create_model(NAME, pretrained=None)
    weights = folder / "tiny.pt"
    torch.save(model.state_dict(), weights)
    return str(config), str(weights)


def jpeg(seed: int, size=(48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def frames_jpeg(n: int, seed: int, size=(32, 24)) -> bytes:
    """``n`` frames stacked vertically, like the codec stage's frames_jpg."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (n * size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def rows(items: list[dict]) -> dict:
    """A stage batch (bookkeeping columns plus payload) from dicts with key, modality and payload."""
    from curate.stage import new_rows

    batch = new_rows(
        [
            {
                "key": it["key"],
                "uri": f"mem://{it['key']}",
                "modality": it["modality"],
                "partition": 0,
                "meta": it.get("meta", {}),
            }
            for it in items
        ]
    )
    for column in ("jpg", "frames_jpg", "emb"):
        if any(column in it for it in items):
            batch[column] = np.array([it.get(column) for it in items], dtype=object)
    return batch
