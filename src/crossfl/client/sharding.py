"""A base model larger than one device: FSDP2 shards it across the task's ranks.

Why FSDP2 (``torch.distributed.fsdp.fully_shard``) rather than DeepSpeed ZeRO-3: it ships with
torch (no new dependency, nothing to build against each vendor's stack), it shards per parameter
(frozen base weights and trainable float32 LoRA weights live in one layer side by side), and it
runs on CPU with gloo in torch 2.13, so the sharded path is tested here against the replicated
one. Every decoder layer (the classes the model names in ``_no_split_modules``) is one FSDP
unit, and the root holds the rest (embeddings, norm, head); gradients are reduce-scattered with
the same averaging as DDP, so the training loop is the same for both.

The rule for ``shard: auto`` (``should_shard``): shard when there is more than one rank and the
base model's parameter bytes (in its compute dtype) exceed ``AUTO_FRACTION`` of one rank's device
memory; the rest is left for activations, the LoRA weights, their gradients and AdamW state.
One rank's device memory: the device's total memory for cuda/xpu, host memory over the node's
ranks for cpu; the smallest over all ranks, so every rank takes the same decision.

Each rank first reads the checkpoint into host memory and shards from there; a model that does
not fit a node's host memory once per rank would need rank 0 to load and broadcast
(``set_model_state_dict(..., broadcast_from_rank0=True)``), which this module does not do yet.
"""

from __future__ import annotations

import os
from typing import Literal

import torch
import torch.distributed as dist
from peft import PeftModel, get_peft_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from crossfl.client.distributed import World, all_reduce

ShardPolicy = Literal["auto", "never", "always"]
AUTO_FRACTION = 0.5
"""``shard: auto`` shards when the base model takes more than this share of a rank's memory."""


def should_shard(
    policy: ShardPolicy,
    param_bytes: int,
    device_bytes: int,
    ranks: int,
    fraction: float = AUTO_FRACTION,
) -> bool:
    """Whether to shard the base model: never for one rank; ``always`` / ``never`` as said;
    ``auto`` when ``param_bytes > fraction * device_bytes``."""
    if ranks <= 1 or policy == "never":
        return False
    if policy == "always":
        return True
    return param_bytes > fraction * device_bytes


def param_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter of ``model`` (the base model in its compute dtype)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def device_bytes(device: torch.device, local_size: int) -> int:
    """Memory one rank on ``device`` may use: the device's total, or host memory / local ranks."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    if device.type == "xpu":
        return int(torch.xpu.get_device_properties(device).total_memory)
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(host // max(1, local_size))


def decide(policy: ShardPolicy, model: torch.nn.Module, world: World) -> bool:
    """``should_shard`` with this rank's figures, agreed over all ranks (smallest memory)."""
    memory = all_reduce(device_bytes(world.device, world.local_size), world, op=dist.ReduceOp.MIN)
    return should_shard(policy, param_bytes(model), int(memory), world.size)


def shard_model(model: PeftModel, world: World) -> None:
    """FSDP2 over the ranks: one unit per decoder layer, then the root. Moves each rank's
    shards to its device."""
    mesh = init_device_mesh(world.device.type, (world.size,))
    layer_classes = set(getattr(model.get_base_model(), "_no_split_modules", None) or ())
    for module in model.modules():
        if type(module).__name__ in layer_classes:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)


def full_adapter_state(model: PeftModel, world: World) -> dict[str, torch.Tensor]:
    """The LoRA weights of a sharded model, whole, on rank 0's host (empty on other ranks).
    Only the trainable weights are gathered (``DTensor.full_tensor``), never the base model.
    Every rank must call it."""
    whole: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            t = p.full_tensor() if isinstance(p, DTensor) else p
            whole[name] = t.detach().cpu()
    if not world.is_main:
        return {}
    return get_peft_model_state_dict(model, state_dict=whole)
