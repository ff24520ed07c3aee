"""One site's share of a federated round: LoRA fine-tuning on site-local SMolInstruct data,
on one rank or many: one path, where a one-rank task is the case of a world of size one.

The records and their tokens come from ``crossfl.client.encoding``. Everything that could vary
between runs is seeded from (seed, round), and the adapter weights are set from the incoming
global adapter (or a seeded fresh init) on every call, so a warm worker and a cold one return
the same adapter for the same task.

A one-rank task (``train_round``) trains the worker's cached base model (``model_cache``) on
its device, under the cache entry's lock. A rank of a multi-rank task (``train_rank`` with a
``World`` of several ranks, started by ``crossfl.client.launch``) loads its own base model into
host memory, wraps it with the task's LoRA config and sets the same adapter as every rank, then
either places it on its device and wraps it in DDP, or shards it with FSDP2
(``crossfl.client.sharding``). The ranks walk the same seeded global batches, each on its
slice; rank 0 gathers the adapter and returns the one result of the task, with the site's
total sample count and the telemetry of all ranks. Ranks are fresh processes per task: the
worker's model cache does not carry over, so every multi-rank task pays for loading the base
model (``cache_hit`` is False).
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch.nn.parallel import DistributedDataParallel

from crossfl.client import model_cache, sharding
from crossfl.client.adapter_io import (
    LORA_METADATA_KEY,
    adapter_from_bytes,
    adapter_to_bytes,
    fresh_adapter_from_shapes,
)
from crossfl.client.contract import (
    LoraSpec,
    TrainResult,
    TrainTask,
    TrainTimings,
    train_result,
)
from crossfl.client.device import select_device
from crossfl.client.distributed import World, gather, shard, single, sum_over_ranks
from crossfl.client.encoding import (
    Example,
    batch_indices,
    collate,
    encode_example,
    load_records,
    pad_id,
    round_seed,
)
from crossfl.client.telemetry import BusyMeter, device_name
from crossfl.client.transport import incoming_adapter, outgoing_adapter
from crossfl.errors import UserError

# ---------------------------------------------------------------- data


def load_examples(
    data_path: str, tokenizer: Any, model_key: str, max_length: int, max_samples: int | None
) -> list[Example]:
    """Tokenized examples of a site's file, memoized per worker while the file is unchanged."""
    path = Path(data_path)
    stat = path.stat() if path.is_file() else None
    key = (
        "train-examples",
        str(path.resolve()),
        stat and (stat.st_mtime_ns, stat.st_size),
        model_key,
        max_length,
        max_samples,
    )

    def build() -> list[Example]:
        return [
            encode_example(tokenizer, r.input, r.output, max_length)
            for r in load_records(data_path, max_samples)
        ]

    if stat is None:
        return build()  # raises the UserError
    return model_cache.memo(key, build)


# ---------------------------------------------------------------- adapter state


def peft_adapter_shapes(model_dir: str, lora: LoraSpec) -> dict[str, tuple[int, ...]]:
    """peft's LoRA tensors of ``lora`` on the model of ``model_dir``'s config.json, by name:
    the model is built on the meta device, so no weight is read (crossfl.client.layout asks
    this, in a child process, of a model whose layout it does not compute itself)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = get_peft_model(AutoModelForCausalLM.from_config(config), lora.peft_config())
    return {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model).items()}


def fresh_adapter_state(model: PeftModel, seed: int) -> dict[str, torch.Tensor]:
    """The seeded fresh adapter for ``model``'s LoRA layers."""
    shapes = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model).items()}
    return fresh_adapter_from_shapes(shapes, seed)


def load_adapter_state(model: PeftModel, state: dict[str, torch.Tensor]) -> None:
    """Set every LoRA weight of ``model`` from ``state``; keys and shapes must match exactly."""
    expected = get_peft_model_state_dict(model)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise UserError(
            f"the adapter does not match the LoRA config: {detail}",
            field="adapter",
            fix="train and evaluate with the same lora settings",
        )
    for name, t in state.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise UserError(
                f"adapter tensor {name} has shape {tuple(t.shape)}, the LoRA config "
                f"gives {tuple(expected[name].shape)}",
                field="adapter",
                fix="train and evaluate with the same lora.r and target_modules",
            )
    set_peft_model_state_dict(model, state)


def prepare_adapter(model: PeftModel, adapter: bytes | None, seed: int) -> None:
    state = adapter_from_bytes(adapter) if adapter is not None else fresh_adapter_state(model, seed)
    load_adapter_state(model, state)


# ---------------------------------------------------------------- the round


def worker_model(
    model_path: str, dtype: str, threads: int | None, expect: str | None = None
) -> tuple[torch.device, model_cache.CachedModel, bool]:
    """Set torch's thread count, pick the device (the site's `expect`ed one), and get the
    (cached) base model."""
    if threads:
        torch.set_num_threads(threads)
    device = select_device(expect)
    entry, hit = model_cache.get_model(model_path, dtype, device)
    return device, entry, hit


def rank_threads(spec: TrainTask, world: World) -> int | None:
    """``torch_threads`` when set; else, for one of several ranks, this process's CPUs shared
    among the node's ranks; else None (torch's own default)."""
    if spec.torch_threads:
        return spec.torch_threads
    if world.distributed:
        return max(1, len(os.sched_getaffinity(0)) // world.local_size)
    return None


def check_enough_samples(samples: int, ranks: int) -> None:
    if samples < ranks:
        raise UserError(
            f"the site's data holds {samples} samples, fewer than its {ranks} ranks",
            field="ranks_per_node",
            fix="use fewer ranks (or nodes), or give the site more data",
        )


@contextlib.contextmanager
def base_model(spec: TrainTask, world: World) -> Iterator[tuple[model_cache.CachedModel, bool]]:
    """The base model a rank trains and whether it was a cache hit: the worker's cached one
    on its device (held under its lock) for one rank; a fresh one in host memory for a rank of
    several, placed or sharded later."""
    if not world.distributed:
        entry, hit = model_cache.get_model(spec.model_path, spec.dtype, world.device)
        with entry.lock:
            yield entry, hit
        return
    base, tokenizer = model_cache.load_base(spec.model_path, spec.dtype)
    yield (
        model_cache.CachedModel(
            base=base, tokenizer=tokenizer, device=torch.device("cpu"), dtype=base.dtype
        ),
        False,
    )


def runner_for(
    model: PeftModel, holder: model_cache.CachedModel, spec: TrainTask, world: World
) -> tuple[torch.nn.Module, bool]:
    """What runs the steps, and whether the base model is sharded: the model itself for one
    rank; for several, the model sharded with FSDP2 or placed on the rank's device in DDP."""
    if not world.distributed:
        return model, False
    if sharding.decide(spec.shard, holder.base, world):
        sharding.shard_model(model, world)
        return model, True
    model.to(world.device)
    ids = [world.device.index] if world.device.type != "cpu" else None
    # Every rank loaded the same weights and adapter: no initial broadcast of the model
    # (buffers are still synced once), and no buffer sync before each forward.
    return (
        DistributedDataParallel(model, device_ids=ids, init_sync=False, forward_sync_buffers=False),
        False,
    )


@dataclass
class Steps:
    losses: list[float]  # each step's mean loss over the global batch's target tokens
    busy_s: float  # this rank's device-seconds inside the steps (telemetry.BusyMeter)
    tokens: int  # tokens (prompt and answer, no padding) of the global batches
    window_s: float  # the loop's wall on this rank (telemetry.train_window_s)


def target_tokens(examples: list[Example], pad: int) -> int:
    """The tokens the loss counts in a batch of ``examples``: labels after the first position
    that are not -100 (``collate``'s labels, shifted as the causal loss shifts them)."""
    labels = collate(examples, pad, torch.device("cpu"))["labels"]
    return int((labels[:, 1:] != -100).sum())


def run_training(
    model: torch.nn.Module,
    examples: list[Example],
    task: TrainTask,
    pad: int,
    world: World,
) -> Steps:
    """``task.local_steps`` AdamW steps on seeded global batches of ``batch_size x ranks``
    examples; each rank runs its slice of every global batch (``step``)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=task.lr, weight_decay=0.0)
    seed = round_seed(task.seed, task.round)
    torch.manual_seed(seed + world.rank)  # LoRA dropout
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    meter = BusyMeter(world.device)
    tokens = 0
    model.train()
    start = time.perf_counter()
    for idx in batch_indices(len(examples), task.batch_size * world.size, task.local_steps, gen):
        tokens += sum(len(examples[i].ids) for i in idx)
        with meter.step():
            # every rank holds every example: the global batch's target count needs no
            # collective, and the losses are summed once, after the loop
            count = target_tokens([examples[i] for i in idx], pad) if world.distributed else None
            mine = [examples[i] for i in shard(idx, world)]
            losses.append(step(model, opt, mine, pad, world, count))
    window = time.perf_counter() - start
    if world.distributed:
        losses = sum_over_ranks(losses, world)
    model.eval()
    return Steps(losses, meter.busy_s, tokens, window)


def step(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    examples: list[Example],
    pad: int,
    world: World,
    targets: int | None,
) -> float:
    """One step on this rank's slice. Its loss is the sum over its target tokens divided by
    ``targets``, the global batch's target-token count, times the ranks because DDP and FSDP
    average gradients: the gradient is the single-process gradient of the global batch's mean
    loss, however the answers' lengths split between ranks. Returns this rank's share of that
    mean loss (the shares of all ranks sum to it: ``sum_over_ranks``). One rank (``targets``
    None): the batch's mean loss over its own target tokens."""
    batch = collate(examples, pad, world.device)
    if targets is None:
        targets = int((batch["labels"][:, 1:] != -100).sum())
    count = torch.tensor(float(max(targets, 1)), device=world.device)
    loss = model(**batch, num_items_in_batch=count).loss * world.size
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach()) / world.size


def train_rank(spec: TrainTask, world: World) -> TrainResult | None:
    """Train this rank's share of ``spec``: rank 0 returns the task's result (``wall_s`` from
    here), other ranks None. Every rank must call it (the adapter and telemetry are gathered)."""
    started_at = time.time()
    t0 = time.perf_counter()
    threads = rank_threads(spec, world)
    if threads:
        torch.set_num_threads(threads)
    with base_model(spec, world) as (holder, hit):
        examples = load_examples(
            spec.data_path, holder.tokenizer, spec.model_path, spec.max_length, spec.max_samples
        )
        check_enough_samples(len(examples), world.size)
        model = holder.wrapped(spec.lora)
        adapter, fetch_s = incoming_adapter(spec)
        prepare_adapter(model, adapter, spec.seed)
        runner, sharded = runner_for(model, holder, spec, world)
        t1 = time.perf_counter()
        steps = run_training(runner, examples, spec, pad_id(holder.tokenizer), world)
        t2 = time.perf_counter()
        if sharded:
            state = sharding.full_adapter_state(model, world)
        else:
            state = get_peft_model_state_dict(model) if world.is_main else {}
        blob = (
            adapter_to_bytes(
                state, spec.adapter_dtype, metadata={LORA_METADATA_KEY: spec.lora.model_dump_json()}
            )
            if world.is_main
            else b""
        )
    ranks: list[dict[str, Any]] = gather(
        {
            "host": socket.gethostname(),
            "device": device_name(world.device),
            "busy_s": steps.busy_s,
            "window_s": steps.window_s,
        },
        world,
    )
    if not world.is_main:
        return None
    t3 = time.perf_counter()
    losses = steps.losses
    if not all(math.isfinite(x) for x in losses):
        raise RuntimeError(f"training diverged (loss {losses[-1]}); lower lr or use float32")
    return train_result(
        blob,
        num_samples=len(examples),
        losses=losses,
        train_tokens=steps.tokens,
        timings=TrainTimings(load_s=t1 - t0, train_s=t2 - t1, serialize_s=t3 - t2, fetch_s=fetch_s),
        started_at=started_at,
        device=str(world.device),
        cache_hit=hit,
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


def train_round(task: dict[str, Any]) -> dict[str, Any]:
    """One round of local training on one rank: a ``TrainTask`` in, a ``TrainResult`` out (as
    plain data). The rank is this process, on the device the site expects."""
    spec = TrainTask.from_wire(task)
    result = train_rank(spec, single(select_device(spec.expect_device)))
    assert result is not None  # the one rank is rank 0
    return outgoing_adapter(spec, result).to_wire()
