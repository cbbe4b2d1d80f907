"""The encoder as a transformers model: ``OvforgeConfig`` and ``OvforgeModel`` (wrapping ``train.model.Encoder``).

An ``hf`` release ships this module as ``modeling_ovforge.py`` (copied by ``train.release.bundle``
with the modules it imports), so ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` loads
it where ovforge is not installed. It therefore imports, of ovforge, only modules that import no
storage, reader or Ray: ``train.config``, ``train.model``, ``train.packing``, ``train.rope``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from train.config import FLAVOURS, ModelConfig
from train.model import Encoder
from train.packing import pack
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


@dataclass
class OvforgeModelOutput(BaseModelOutputWithPooling):
    """``BaseModelOutputWithPooling`` plus the tokens' ``positions`` (B, L, 3) (t, h, w) and ``attention_mask`` (B, L).

    ``hidden_states``: the embedded tokens and each block's output, (B, L, dim) each, zero at padding;
    ``last_hidden_state`` is the last of them after the final norm.
    """

    positions: torch.LongTensor | None = None
    attention_mask: torch.LongTensor | None = None


class OvforgePreTrainedModel(PreTrainedModel):
    config_class = OvforgeConfig
    base_model_prefix = "ovforge"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

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
    encoder), so the result equals ``Encoder`` on the same samples. ``attn_implementation="eager"``
    runs SDPA on its math kernel (plain matmul and softmax); ``"sdpa"`` (the default) lets torch
    pick a fused one.
    """

    def __init__(self, config: OvforgeConfig):
        super().__init__(config)
        self.encoder = Encoder(config.model_config)
        self.gradient_checkpointing = False  # set by gradient_checkpointing_enable()
        self.post_init()

    def _run_block(self, block, *args):
        return self._gradient_checkpointing_func(block.__call__, *args)

    def forward(
        self,
        pixel_values,
        positions,
        attention_mask=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        if kwargs.get("output_attentions"):
            raise ValueError("output_attentions is not supported: attention runs in fused kernels over packed tokens")
        hidden_wanted = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = self.config.return_dict if return_dict is None else return_dict
        b, length = pixel_values.shape[:2]
        tokens = pixel_values.reshape(b, length, -1).to(self.encoder.patch_embed.weight.dtype)
        mask = torch.ones(b, length, dtype=torch.bool, device=tokens.device)
        mask = mask if attention_mask is None else attention_mask.bool()
        packed = pack([(tokens[i][mask[i]], positions[i][mask[i]]) for i in range(b)])
        states = [] if hidden_wanted else None
        run_block = self._run_block if self.gradient_checkpointing and self.training else None
        low = tokens.dtype != torch.float32  # weights loaded in half precision run as the trainer ran: autocast
        eager = self.config._attn_implementation == "eager"
        kernels = sdpa_kernel(SDPBackend.MATH) if eager else contextlib.nullcontext()
        with torch.autocast(tokens.device.type, dtype=tokens.dtype, enabled=low), kernels:
            hidden = self.encoder.forward_features(packed, states, run_block)
            pooled = self.encoder.head(hidden, packed)
        last = _unpack(hidden, mask)
        hidden_states = tuple(_unpack(s, mask) for s in states) if states is not None else None
        if not return_dict:
            return tuple(x for x in (last, pooled, hidden_states) if x is not None)
        return OvforgeModelOutput(
            last_hidden_state=last,
            pooler_output=pooled,
            hidden_states=hidden_states,
            positions=positions.long(),
            attention_mask=mask.long(),
        )


def _unpack(packed_states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, dim) packed token states -> (B, L, dim), zero where ``mask`` is False."""
    out = packed_states.new_zeros(*mask.shape, packed_states.shape[-1])
    out[mask] = packed_states
    return out
