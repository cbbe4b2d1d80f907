"""Where a skipped step's non-finite gradient came from: the step's micro-batches run again, watched.

``train.optim.step_if_finite`` keeps a NaN step from being learned, but the skip alone says nothing
about its cause, and a NaN seen once in a thousand steps is hard to meet again. So when a step is
skipped, its micro-batches (kept for that purpose) are forwarded and backpropagated once more, in eager
mode, with every module of the encoder and heads watched:

- forward: the first module (in execution order) whose output holds a NaN or infinity;
- backward: the first module whose input gradient is non-finite while its output gradient was finite
  (backward reaches the innermost module first, so this is the operation that made it);
- the parameters whose gradient is non-finite, and whether any parameter itself is.

The rerun uses the step's own batches and seeds, so it meets the same values unless the non-finite
number came from the compiled kernels alone ("reproduced": false says so). Nothing raises on the way,
so ranks that all skip the step (the norms are global) run the same collectives. The findings go to
``RUN/nonfinite/step_NNNNNNNN.json`` and one console line; the gradients are dropped afterwards.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


def _tensors(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for item in x for t in _tensors(item)]
    return []


def finite(x) -> bool:
    """No NaN or infinity in any floating tensor of ``x`` (a tensor, or lists and tuples of them)."""
    return all(bool(torch.isfinite(t).all()) for t in _tensors(x) if t.is_floating_point())


class Watch:
    """Forward and full backward hooks on every named submodule of ``modules``; first offenders noted."""

    def __init__(self, modules: dict[str, nn.Module]):
        self.forward: str | None = None
        self.backward: str | None = None
        self.handles = []
        for prefix, root in modules.items():
            for name, module in root.named_modules():
                full = f"{prefix}.{name}" if name else prefix
                self.handles.append(module.register_forward_hook(self._on_forward(full)))
                self.handles.append(module.register_full_backward_hook(self._on_backward(full)))

    def _on_forward(self, name: str) -> Callable:
        def hook(module, inputs, output):
            if self.forward is None and not finite(output):
                self.forward = name

        return hook

    def _on_backward(self, name: str) -> Callable:
        def hook(module, grad_input, grad_output):
            if self.backward is None and finite(grad_output) and not finite(grad_input):
                self.backward = name

        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def diagnose(
    run_dir: Path,
    step: int,
    modules: dict[str, nn.Module],
    rerun: Callable[[int], tuple[torch.Tensor, list[str]]],
    micro_batches: int,
    describe: Callable[[int], dict],
    log: bool,
) -> dict:
    """Run ``rerun(micro)`` (forward and backward of micro-batch ``micro``) for each micro-batch, watched.

    ``rerun`` returns the loss and the names of gradients held outside ``.grad`` that are non-finite.

    ``modules``: named roots whose submodules are watched and whose parameters are checked;
    ``describe(micro)``: facts of that micro-batch for the report (modalities, lengths).
    """
    params = {f"{p}.{n}": q for p, m in modules.items() for n, q in m.named_parameters()}
    for q in params.values():
        q.grad = None
    watch = Watch(modules)
    losses, other_bad = [], []
    try:
        with torch.compiler.set_stance("force_eager"), warnings.catch_warnings():
            # modules fed only the (constant) tokens report their output gradient: what is wanted here
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for micro in range(micro_batches):
                loss, bad = rerun(micro)
                losses.append(float(loss.detach()))
                other_bad += [n for n in bad if n not in other_bad]
    finally:
        watch.close()
    bad_grads = [n for n, q in params.items() if q.grad is not None and not finite(q.grad)] + other_bad
    report = {
        "step": step + 1,
        "reproduced": bool(bad_grads) or watch.forward is not None or watch.backward is not None,
        "losses": losses,
        "first_non_finite_forward": watch.forward,
        "first_non_finite_backward": watch.backward,
        "non_finite_parameter_grads": bad_grads[:50],
        "non_finite_parameter_grads_count": len(bad_grads),
        "non_finite_parameters": [n for n, q in params.items() if not finite(q.detach())][:50],
        "micro_batches": [describe(m) for m in range(micro_batches)],
    }
    for q in params.values():
        q.grad = None
    if log:
        out = Path(run_dir) / "nonfinite"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"step_{step + 1:08d}.json").write_text(json.dumps(report, indent=1))
        where = (
            f"forward first at {watch.forward}, backward first at {watch.backward}"
            if report["reproduced"]
            else "not reproduced in eager mode (the compiled kernels alone made it)"
        )
        print(f"[train] step {step + 1}: non-finite values {where}; details in {out.name}/", flush=True)
    return report
