"""``--format hf``: a release folder transformers loads with ``trust_remote_code=True``, no ovforge needed.

The folder holds the weights, ``config.json`` and ``preprocessor_config.json`` with an ``auto_map``
for ``AutoConfig``, ``AutoModel``, ``AutoImageProcessor`` and ``AutoProcessor``, and the code those
name: ``modeling_ovforge.py`` (``train.release.modeling``), ``processing_ovforge.py``
(``train.release.processing``) and the ovforge modules they import, copied at release time by
``train.release.bundle``. Where ovforge is installed, ``OvforgeModel.from_pretrained(folder)`` and
``OvforgeImageProcessor.from_pretrained(folder)`` load it with the project's own classes.
"""

from __future__ import annotations

import json
from pathlib import Path

from manifests.loader import git_revision
from train.release.bundle import ENTRIES, bundle
from train.release.modeling import OvforgeConfig, OvforgeModel
from train.release.native import export, load_release
from train.release.preprocessor import finish_release
from train.release.processing import OvforgeImageProcessor

HF_LOADING = """## Loading (transformers)

The model and processor code ship in this folder (`modeling_ovforge.py`, `processing_ovforge.py`
and the modules they import); they need torch, numpy, pillow, av, numba and scipy.

```python
import torch
from transformers import AutoModel, AutoProcessor

path = "path/to/this/folder"
model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
inputs = processor(images=[image], videos=["clip.mp4"])  # PIL images / arrays; video files or frames
with torch.no_grad():
    out = model(**inputs, output_hidden_states=True)
out.pooler_output        # (B, {dim}) embeddings
out.last_hidden_state    # (B, L, {dim}) per-token states, zero at padding (out.attention_mask == 0)
out.hidden_states        # the embedded tokens and each of the {depth} blocks' outputs, (B, L, {dim}) each
out.positions            # (B, L, 3) each token's (t, h, w)
```

`model.gradient_checkpointing_enable()` checkpoints every block for fine-tuning;
`attn_implementation="eager"` runs attention on SDPA's math kernel.

Video files become codec tokens (curate.codec patch selection, then the trainer's decoding);
`processor(videos=..., video_mode="frames")` samples whole frames instead. The processor's
settings are those of the training run's last step (`preprocessor_config.json`).
"""


def export_hf(checkpoint: str | Path, out_dir: str | Path, probe: str | None = None) -> Path:
    """A native release, then transformers' config and weights (overwriting the native ones), the processor and the code."""
    out = export(checkpoint, out_dir, library="transformers", probe=probe)
    encoder = load_release(out)
    model = OvforgeModel(OvforgeConfig(**{k: getattr(encoder.cfg, k) for k in ("flavour", "patch", "rope_theta")}))
    model.encoder.load_state_dict(encoder.state_dict(), strict=True)
    loading = HF_LOADING.format(dim=model.config.hidden_size, depth=model.config.num_hidden_layers)
    finish_release(out, loading)  # reads the native config.json, which save_pretrained then replaces
    processor = f"{ENTRIES['train.release.processing']}.{OvforgeImageProcessor.__name__}"
    auto = {"AutoImageProcessor": processor, "AutoProcessor": processor}
    modeling = ENTRIES["train.release.modeling"]
    model.config.auto_map = {"AutoConfig": f"{modeling}.OvforgeConfig", "AutoModel": f"{modeling}.OvforgeModel", **auto}
    model.save_pretrained(out)
    preprocessor = json.loads((out / "preprocessor_config.json").read_text())
    (out / "preprocessor_config.json").write_text(json.dumps({**preprocessor, "auto_map": auto}, indent=2) + "\n")
    bundle(out, revision=git_revision())
    return out
