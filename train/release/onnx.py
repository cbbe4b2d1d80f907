"""``--format onnx``: the encoder as one ONNX graph for one sample of any token count.

Inputs ``patches`` (N, 3*p*p) float32 normalised patches and ``positions`` (N, 3) int64 (t, h, w);
outputs ``last_hidden_state`` (N, dim) and ``pooler_output`` (1, dim). Exported with torch's
dynamo exporter; the graph is checked against PyTorch with onnxruntime before it is kept.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from train.model import Encoder
from train.packing import Packed
from train.release.native import export, load_release

FILE = "encoder.onnx"


class _OneSample(Packed):
    """A packed batch of exactly one sample: one run by definition, with a symbolic length."""

    @property
    def batch(self) -> int:
        return 1

    @property
    def runs(self) -> list[tuple[int, int]]:  # the base class compares lengths, which a symbolic length forbids
        return [(self.lengths[0], 1)]


class OnnxEncoder(nn.Module):
    """``Encoder`` on one sample, with plain tensors in and out (what an ONNX graph can carry)."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, patches: torch.Tensor, positions: torch.Tensor):
        n = patches.shape[0]
        segment = torch.zeros_like(positions[:, 0])
        cu = torch.cat([segment[:1], segment[:1] + n]).int()
        packed = _OneSample(patches.reshape(n, -1), positions.float(), (n,), cu, segment)
        hidden = self.encoder.forward_features(packed)
        return hidden, self.encoder.head(hidden, packed)


def _sdpa_any_rank(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """torch's ONNX SDPA takes 4D tensors only; the pooling head attends with 3D ones, so lift them."""
    import onnx_ir as ir
    from onnxscript import opset18 as op
    from onnxscript.function_libs.torch_lib.ops.nn import aten_scaled_dot_product_attention as sdpa

    if len(query.shape) == 4:
        return sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    axis = op.Constant(value_ints=[0])
    lifted = []
    for x in (query, key, value):
        y = op.Unsqueeze(x, axis)
        y.shape, y.dtype = ir.Shape([1, *x.shape]), x.dtype  # the traced op leaves them unset; sdpa reads them
        lifted.append(y)
    return op.Squeeze(sdpa(*lifted, attn_mask, dropout_p, is_causal, scale, enable_gqa), axis)


def export_onnx(encoder: Encoder, path: str | Path, check_tokens: int = 7) -> Path:
    """Write the graph to ``path`` and check it with onnxruntime on a sample of ``check_tokens`` tokens."""
    path = Path(path)
    module = OnnxEncoder(encoder.float()).eval()
    dim = 3 * encoder.cfg.patch**2
    g = torch.Generator().manual_seed(0)
    example = (torch.randn(5, dim, generator=g), torch.randint(0, 4, (5, 3), generator=g))
    tokens = torch.export.Dim("tokens", min=1)
    with warnings.catch_warnings():  # both inputs share the token axis; torch notes it once per input
        warnings.filterwarnings("ignore", message="# The axis name")
        program = torch.onnx.export(
            module,
            example,
            dynamo=True,
            input_names=["patches", "positions"],
            output_names=["last_hidden_state", "pooler_output"],
            dynamic_shapes={"patches": {0: tokens}, "positions": {0: tokens}},
            custom_translation_table={torch.ops.aten.scaled_dot_product_attention.default: _sdpa_any_rank},
            verbose=False,
        )
        program.save(str(path))
    check = (torch.randn(check_tokens, dim, generator=g), torch.randint(0, 9, (check_tokens, 3), generator=g))
    got = run_onnx(path, *check)
    with torch.no_grad():
        want = module(*check)
    for name, a, b in zip(("last_hidden_state", "pooler_output"), got, want, strict=True):
        if not np.allclose(a, b.numpy(), rtol=1e-4, atol=1e-4):
            raise RuntimeError(f"{path}: onnxruntime's {name} differs from PyTorch's by {np.abs(a - b.numpy()).max()}")
    return path


def run_onnx(path: str | Path, patches, positions) -> list[np.ndarray]:
    """One sample through onnxruntime on the CPU: [last_hidden_state (N, dim), pooler_output (1, dim)]."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"patches": np.asarray(patches, np.float32), "positions": np.asarray(positions, np.int64)}
    return session.run(None, feed)


ONNX_LOADING = """## Loading (ONNX)

`{file}` holds the encoder for one sample of any token count: inputs `patches` (N, {dim_in}) float32
(CLIP-normalised {patch}x{patch} patches, flattened channel-major) and `positions` (N, 3) int64 (t, h, w);
outputs `last_hidden_state` (N, {dim}) and `pooler_output` (1, {dim}).

```python
import onnxruntime as ort
from train.release.processing import OvforgeImageProcessor

path = "path/to/this/folder"
processor = OvforgeImageProcessor.from_pretrained(path)  # the trainer's preprocessing
inputs = processor(images=[image], return_tensors="np")
session = ort.InferenceSession(f"{{path}}/{file}")
hidden, pooled = session.run(None, {{"patches": inputs["pixel_values"][0], "positions": inputs["positions"][0]}})
```

The folder is also a native release (`train.release.load_release`).
"""


def export_onnx_release(checkpoint: str | Path, out_dir: str | Path, probe: str | None = None) -> Path:
    """A native release plus ``encoder.onnx`` and the processor's settings in the same folder."""
    from train.release.preprocessor import finish_release  # transformers: only for the release, not for run_onnx

    out = export(checkpoint, out_dir, library="onnx", probe=probe)
    encoder = load_release(out)
    export_onnx(encoder, out / FILE)
    patch, dim = encoder.cfg.patch, encoder.dim
    finish_release(out, ONNX_LOADING.format(file=FILE, patch=patch, dim_in=3 * patch**2, dim=dim))
    return out
