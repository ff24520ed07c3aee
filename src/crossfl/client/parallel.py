"""What one rank of a multi-rank training task does, however it was started.

Every rank loads the base model into host memory, wraps it with the task's LoRA config and sets
the same adapter (the incoming global one, or the seeded fresh one), then either places it on
its device and wraps it in DDP, or shards it with FSDP2 (``crossfl.client.sharding``). The
ranks walk the same seeded global batches (``train.run_training``), each on its slice; rank 0
gathers the adapter and returns the one result of the task, with the site's total sample count
and the telemetry of all ranks. Other ranks return None.

Ranks are fresh processes per task: the worker's model cache does not carry over, so every
multi-rank task pays for loading the base model (``cache_hit`` is False).
"""

from __future__ import annotations

import math
import os
import sys
import time

import torch
from peft import get_peft_model_state_dict
from torch.nn.parallel import DistributedDataParallel

from crossfl.client import model_cache, sharding
from crossfl.client.adapter_io import LORA_METADATA_KEY, adapter_to_bytes
from crossfl.client.contract import TrainResult, TrainTask, TrainTimings
from crossfl.client.distributed import World, gather, hostname
from crossfl.client.telemetry import device_name
from crossfl.client.train import load_examples, lora_key, pad_id, prepare_adapter, run_training
from crossfl.client.transport import incoming_adapter
from crossfl.errors import UserError


def rank_threads(spec: TrainTask, world: World) -> int:
    """``torch_threads`` when set, else this process's CPUs shared among the node's ranks."""
    if spec.torch_threads:
        return spec.torch_threads
    return max(1, len(os.sched_getaffinity(0)) // world.local_size)


def check_enough_samples(samples: int, ranks: int) -> None:
    if samples < ranks:
        raise UserError(
            f"the site's data holds {samples} samples, fewer than its {ranks} ranks",
            field="ranks_per_node",
            fix="use fewer ranks (or nodes), or give the site more data",
        )


def train_rank(spec: TrainTask, world: World) -> TrainResult | None:
    """Train this rank's share; rank 0 returns the task's result (``wall_s`` from here)."""
    started_at = time.time()
    t0 = time.perf_counter()
    torch.set_num_threads(rank_threads(spec, world))
    base, tokenizer = model_cache.load_base(spec.model_path, spec.dtype)
    examples = load_examples(
        spec.data_path, tokenizer, spec.model_path, spec.max_length, spec.max_samples
    )
    check_enough_samples(len(examples), world.size)
    holder = model_cache.CachedModel(
        base=base, tokenizer=tokenizer, device=torch.device("cpu"), dtype=base.dtype
    )
    model = holder.wrapped(lora_key(spec.lora))
    adapter, fetch_s = incoming_adapter(spec)
    prepare_adapter(model, adapter, spec.seed)
    sharded = sharding.decide(spec.shard, base, world)
    runner: torch.nn.Module
    if sharded:
        sharding.shard_model(model, world)
        runner = model
    else:
        model.to(world.device)
        ids = [world.device.index] if world.device.type != "cpu" else None
        # Every rank loaded the same weights and adapter: no initial broadcast of the model
        # (buffers are still synced once), and no buffer sync before each forward.
        runner = DistributedDataParallel(
            model, device_ids=ids, init_sync=False, forward_sync_buffers=False
        )
    t1 = time.perf_counter()
    steps = run_training(runner, examples, spec, pad_id(tokenizer), world.device, world)
    t2 = time.perf_counter()
    if sharded:
        state = sharding.full_adapter_state(model, world)
    else:
        state = get_peft_model_state_dict(model) if world.is_main else {}
    ranks = gather(
        {
            "host": hostname(),
            "device": device_name(world.device),
            "busy_s": steps.busy_s,
            "window_s": steps.window_s,
        },
        world,
    )
    if not world.is_main:
        return None
    blob = adapter_to_bytes(
        state, spec.adapter_dtype, metadata={LORA_METADATA_KEY: spec.lora.model_dump_json()}
    )
    t3 = time.perf_counter()
    losses = steps.losses
    if not all(math.isfinite(x) for x in losses):
        raise RuntimeError(f"training diverged (loss {losses[-1]}); lower lr or use float32")
    return TrainResult(
        adapter=blob,
        num_samples=len(examples),
        train_loss=float(sum(losses) / len(losses)),
        first_loss=float(losses[0]),
        steps=len(losses),
        train_tokens=steps.tokens,
        timings=TrainTimings(load_s=t1 - t0, train_s=t2 - t1, serialize_s=t3 - t2, fetch_s=fetch_s),
        started_at=started_at,
        finished_at=time.time(),
        device=str(world.device),
        host=hostname(),
        pid=os.getpid(),
        python=sys.executable,
        cache_hit=False,
        ranks=world.size,
        nodes=len({r["host"] for r in ranks}),
        devices_per_rank=1,
        device_type=world.device.type,
        device_names=[r["device"] for r in ranks],
        dist_backend=world.backend,
        sharded=sharded,
        accelerator_s=sum(r["busy_s"] for r in ranks),
        train_window_s=max(r["window_s"] for r in ranks),
        wall_s=time.perf_counter() - t0,
    )
