"""The one place that applies activation checkpointing, torch.compile and DDP / FSDP2.

The model file stays single-device; this module transforms a built encoder in torchtitan's
order: checkpointing -> compile (per block, in place, so parameter names do not change) ->
data parallelism. Concept heads are *not* wrapped: their centres are sharded across ranks by
construction (``train.loss``) and must not be averaged.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from train.config import ParallelConfig


def setup_distributed() -> tuple[int, int, torch.device]:
    """Join the torchrun group, or make a one-process group so every code path is the same."""
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if "RANK" in os.environ:
            if torch.cuda.is_available():
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            dist.init_process_group(backend)
        else:
            if torch.cuda.is_available():
                torch.cuda.set_device(0)
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return rank, world, device


def parallelize(encoder: nn.Module, cfg: ParallelConfig, world: int, device: torch.device) -> nn.Module:
    if cfg.activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        for i, block in enumerate(encoder.blocks):
            encoder.blocks[i] = checkpoint_wrapper(block)
    if cfg.compile:
        for block in encoder.blocks:
            block.compile()
    if world == 1:
        return encoder
    if cfg.mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in encoder.blocks:
            fully_shard(block, reshard_after_forward=cfg.fsdp_reshard)
        fully_shard(encoder)
        return encoder
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(encoder, device_ids=ids)


def clip_grads(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip by the global norm; DTensor (sharded) gradients are reduced across ranks."""
    norm = torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm, foreach=True)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return norm
