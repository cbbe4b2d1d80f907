"""transformers integration: ``import train.release.hf`` registers the ovforge encoder with the Auto classes.

After the import, ``AutoModel.from_pretrained(folder)`` and ``AutoProcessor.from_pretrained(folder)``
load a ``--format hf`` release offline. The model wraps ``train.model.Encoder`` (one
implementation; the weights are the encoder's under the ``encoder.`` prefix). transformers has
no entry-point discovery for out-of-tree models, and ``trust_remote_code`` would copy the model's
source into every release, so registration on import is the supported route.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from train.config import FLAVOURS, ModelConfig
from train.model import Encoder
from train.packing import pack
from train.release.native import export, load_release
from train.release.processing import OvforgeImageProcessor, finish_release
from train.rope import Rope3D

MODEL_TYPE = "ovforge"


class OvforgeConfig(PretrainedConfig):
    """The encoder's ``ModelConfig``; the size fields are derived from the flavour, for tools that read them."""

    model_type = MODEL_TYPE

    def __init__(self, flavour: str = "debug", patch: int = 16, rope_theta: float = 10000.0, **kwargs):
        if flavour not in FLAVOURS:
            raise ValueError(f"flavour must be one of {sorted(FLAVOURS)}, got {flavour!r}")
        self.flavour, self.patch, self.rope_theta = flavour, patch, rope_theta
        derived = dict(
            zip(
                ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"),
                FLAVOURS[flavour],
                strict=True,
            )
        )
        for key in derived:
            kwargs.pop(key, None)
        super().__init__(**kwargs)
        for key, value in derived.items():
            setattr(self, key, value)

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig(flavour=self.flavour, patch=self.patch, rope_theta=self.rope_theta)


class OvforgePreTrainedModel(PreTrainedModel):
    config_class = OvforgeConfig
    base_model_prefix = "ovforge"
    main_input_name = "pixel_values"

    @torch.no_grad()
    def _init_weights(self, module):
        """Weights come from ``Encoder.__init__`` or the release; the RoPE tables (never saved) are rebuilt."""
        if isinstance(module, Rope3D):
            fresh = Rope3D(module.head_dim, self.config.rope_theta)
            module.freqs.copy_(fresh.freqs)
            module.axis.copy_(fresh.axis)


class OvforgeModel(OvforgePreTrainedModel):
    """Padded batches in, per-token states and the PMA-pooled embedding out.

    ``pixel_values`` (B, L, 3*p*p) or (B, L, 3, p, p) normalised patches, ``positions`` (B, L, 3)
    (t, h, w) of each token (images: t = 0; frames: t = frame index; codec tokens: their grid cell),
    ``attention_mask`` (B, L) marks real tokens. The valid tokens are packed (no padding reaches the
    encoder), so the result equals ``Encoder`` on the same samples.
    """

    def __init__(self, config: OvforgeConfig):
        super().__init__(config)
        self.encoder = Encoder(config.model_config)
        self.post_init()

    def forward(self, pixel_values, positions, attention_mask=None, return_dict=None, **kwargs):
        b, length = pixel_values.shape[:2]
        tokens = pixel_values.reshape(b, length, -1).to(self.encoder.patch_embed.weight.dtype)
        mask = torch.ones(b, length, dtype=torch.bool, device=tokens.device)
        mask = mask if attention_mask is None else attention_mask.bool()
        packed = pack([(tokens[i][mask[i]], positions[i][mask[i]]) for i in range(b)])
        low = tokens.dtype != torch.float32  # weights loaded in half precision run as the trainer ran: autocast
        with torch.autocast(tokens.device.type, dtype=tokens.dtype, enabled=low):
            hidden = self.encoder.forward_features(packed)
            pooled = self.encoder.head(hidden, packed)
        last = hidden.new_zeros(b, length, hidden.shape[-1])
        last[mask] = hidden
        if return_dict is False:
            return last, pooled
        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=pooled)


AutoConfig.register(MODEL_TYPE, OvforgeConfig, exist_ok=True)
AutoModel.register(OvforgeConfig, OvforgeModel, exist_ok=True)
if "image_processor_classes" in inspect.signature(AutoImageProcessor.register).parameters:  # transformers >= 5
    # one class for every backend: it runs the trainer's own PIL/torch decoding whatever the backend
    backends = {"pil": OvforgeImageProcessor, "torchvision": OvforgeImageProcessor}
    AutoImageProcessor.register(OvforgeConfig, image_processor_classes=backends, exist_ok=True)
else:
    AutoImageProcessor.register(OvforgeConfig, slow_image_processor_class=OvforgeImageProcessor, exist_ok=True)

HF_LOADING = """## Loading (transformers)

```python
import torch
import train.release.hf  # registers the ovforge classes with transformers' Auto classes (no remote code)
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{out}").eval()
processor = AutoProcessor.from_pretrained("{out}")
inputs = processor(images=[image], videos=["clip.mp4"])  # PIL images / arrays; video files or frames
with torch.no_grad():
    out = model(**inputs)
out.pooler_output        # (B, {dim}) embeddings
out.last_hidden_state    # (B, L, {dim}) per-token states, zero at padding (attention_mask == 0)
```

Video files become codec tokens (curate.codec patch selection, then the trainer's decoding);
`processor(videos=..., video_mode="frames")` samples whole frames instead. The processor's
settings are those of the training run's last step (`preprocessor_config.json`).
"""


def export_hf(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """A native release, then transformers' config and weights (overwriting the native ones) and the processor."""
    out = export(checkpoint, out_dir)
    encoder = load_release(out)
    model = OvforgeModel(OvforgeConfig(**{k: getattr(encoder.cfg, k) for k in ("flavour", "patch", "rope_theta")}))
    model.encoder.load_state_dict(encoder.state_dict(), strict=True)
    finish_release(out, HF_LOADING.format(out=out, dim=model.config.hidden_size))  # reads the native config.json
    model.save_pretrained(out)
    return out
