"""One site's share of a federated round: LoRA fine-tuning on site-local SMolInstruct data.

The prompt is the record's ``input``, the target its ``output``; the loss counts only target
tokens. Everything that could vary between runs is seeded from (seed, round), and the adapter
weights are set from the incoming global adapter (or a seeded fresh init) on every call, so a
warm worker and a cold one return the same adapter for the same task.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

from crossfl.client import model_cache
from crossfl.client.adapter_io import LORA_METADATA_KEY, adapter_from_bytes, adapter_to_bytes
from crossfl.client.contract import LoraSpec, TrainResult, TrainTask, TrainTimings
from crossfl.client.device import select_device
from crossfl.client.distributed import World, all_reduce, shard, single
from crossfl.client.telemetry import device_name
from crossfl.client.transport import incoming_adapter, outgoing_adapter
from crossfl.data.smolinstruct import Record, load_jsonl
from crossfl.errors import UserError

DATA_FIX = "run `make data` (or `crossfl data build-chem --out DIR`) and point data_path at it"
PROMPT_SUFFIX = "\n"
"""Appended to the instruction; the answer follows it."""


def lora_key(spec: LoraSpec) -> model_cache.LoraKey:
    """The model cache's key for a LoRA config."""
    return model_cache.LoraKey(
        spec.r, float(spec.alpha), float(spec.dropout), tuple(sorted(spec.target_modules))
    )


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class Example:
    ids: tuple[int, ...]
    prompt_len: int  # tokens before the answer; labels are -100 there


def _special(tokenizer: Any, name: str) -> int | None:
    value = getattr(tokenizer, f"{name}_token_id", None)
    return int(value) if value is not None else None


def pad_id(tokenizer: Any) -> int:
    pid = _special(tokenizer, "pad")
    if pid is None:
        pid = _special(tokenizer, "eos")
    return pid if pid is not None else 0


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    bos = _special(tokenizer, "bos")
    ids = tokenizer.encode(text + PROMPT_SUFFIX, add_special_tokens=False)
    return ([bos] if bos is not None else []) + list(ids)


def encode_example(tokenizer: Any, prompt: str, answer: str, max_length: int) -> Example:
    p = encode_prompt(tokenizer, prompt)
    eos = _special(tokenizer, "eos")
    a = list(tokenizer.encode(answer, add_special_tokens=False)) + (
        [eos] if eos is not None else []
    )
    a = a[: max_length - 1]
    if len(p) + len(a) > max_length:  # keep the answer; cut the prompt's start (after bos)
        keep = max_length - len(a)
        p = p[:1] + p[len(p) - keep + 1 :] if keep > 1 else p[:keep]
    return Example(tuple(p + a), len(p))


def load_records(data_path: str, max_samples: int | None) -> list[Record]:
    path = Path(data_path)
    if not path.exists():
        raise UserError(f"site data {path} does not exist", field="data_path", fix=DATA_FIX)
    records = load_jsonl(path, limit=max_samples)
    if not records:
        raise UserError(f"site data {path} holds no records", field="data_path", fix=DATA_FIX)
    return records


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


def collate(examples: list[Example], pad: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels are -100 on the prompt and on padding."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        mask[i, :n] = 1
        labels[i, e.prompt_len : n] = ids[i, e.prompt_len : n]
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "labels": labels.to(device),
    }


def batch_indices(n: int, batch_size: int, steps: int, gen: torch.Generator) -> list[list[int]]:
    """``steps`` batches drawn epoch by epoch from seeded permutations of range(n)."""
    need = batch_size * steps
    order: list[int] = []
    while len(order) < need:
        order.extend(torch.randperm(n, generator=gen).tolist())
    size = min(batch_size, n)
    return [order[i * size : (i + 1) * size] for i in range(steps)]


def round_seed(seed: int, rnd: int) -> int:
    return (seed * 1_000_003 + rnd * 7_919 + 17) % (2**63 - 1)


# ---------------------------------------------------------------- adapter state


def fresh_adapter_from_shapes(
    shapes: dict[str, tuple[int, ...]], seed: int
) -> dict[str, torch.Tensor]:
    """peft's default LoRA init (A: Kaiming-uniform, B: zeros), drawn from a generator seeded
    with ``seed`` in sorted key order: the same tensors in every process, whatever its RNG
    history. Sites start round 1 from this when no adapter is sent; the server rebuilds the same
    global version 0 from the key names and shapes alone."""
    gen = torch.Generator().manual_seed(seed)
    fresh: dict[str, torch.Tensor] = {}
    for name in sorted(shapes):
        t = torch.empty(tuple(shapes[name]), dtype=torch.float32)
        if ".lora_A." in name:
            torch.nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=gen)
        elif ".lora_embedding_B." in name:
            torch.nn.init.normal_(t, generator=gen)
        else:  # lora_B, lora_embedding_A
            torch.nn.init.zeros_(t)
        fresh[name] = t
    return fresh


def adapter_shapes(model_dir: str, lora: LoraSpec) -> dict[str, tuple[int, ...]]:
    """peft's LoRA tensors of ``lora`` on the model of ``model_dir``'s config.json, by name:
    the model is built on the meta device, so no weight is read (the server derives the base
    adapter's layout this way, before any site has answered)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = get_peft_model(AutoModelForCausalLM.from_config(config), lora_key(lora).config())
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


@dataclass
class Steps:
    losses: list[float]  # each step's mean loss over the global batch's target tokens
    busy_s: float  # this rank's seconds inside the steps (telemetry.accelerator_s)
    tokens: int  # tokens (prompt and answer, no padding) of the global batches


def run_training(
    model: torch.nn.Module,
    examples: list[Example],
    task: TrainTask,
    pad: int,
    device: torch.device,
    world: World | None = None,
) -> Steps:
    """``task.local_steps`` AdamW steps on seeded global batches of ``batch_size x ranks``
    examples; with several ranks (``model`` wrapped in DDP or sharded with FSDP2) each rank
    runs its slice of every global batch (``distributed_step``)."""
    world = world or single(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=task.lr, weight_decay=0.0)
    seed = round_seed(task.seed, task.round)
    torch.manual_seed(seed + world.rank)  # LoRA dropout
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    busy = 0.0
    tokens = 0
    model.train()
    for idx in batch_indices(len(examples), task.batch_size * world.size, task.local_steps, gen):
        tokens += sum(len(examples[i].ids) for i in idx)
        start = time.perf_counter()
        if world.distributed:
            losses.append(
                distributed_step(model, opt, [examples[i] for i in shard(idx, world)], pad, world)
            )
        else:
            loss = model(**collate([examples[i] for i in idx], pad, device)).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        busy += time.perf_counter() - start
    model.eval()
    return Steps(losses, busy, tokens)


def distributed_step(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    examples: list[Example],
    pad: int,
    world: World,
) -> float:
    """One step on this rank's slice. Its loss is the sum over its target tokens divided by
    the global batch's target-token count (all-reduced), times the ranks because DDP and FSDP
    average gradients: the gradient is the single-process gradient of the global batch's mean
    loss, however the answers' lengths split between ranks. Returns that mean loss."""
    batch = collate(examples, pad, world.device)
    targets = all_reduce(int((batch["labels"][:, 1:] != -100).sum()), world)
    count = torch.tensor(max(targets, 1.0), device=world.device)
    loss = model(**batch, num_items_in_batch=count).loss * world.size
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return all_reduce(float(loss.detach()), world) / world.size


def train_round(task: dict[str, Any]) -> dict[str, Any]:
    """One round of local training: a ``TrainTask`` in, a ``TrainResult`` out (as plain data)."""
    started_at = time.time()
    t0 = time.perf_counter()
    spec = TrainTask.from_wire(task)
    adapter, fetch_s = incoming_adapter(spec)
    device, entry, hit = worker_model(
        spec.model_path, spec.dtype, spec.torch_threads, spec.expect_device
    )
    with entry.lock:
        examples = load_examples(
            spec.data_path, entry.tokenizer, spec.model_path, spec.max_length, spec.max_samples
        )
        model = entry.wrapped(lora_key(spec.lora))
        prepare_adapter(model, adapter, spec.seed)
        t1 = time.perf_counter()
        steps = run_training(model, examples, spec, pad_id(entry.tokenizer), device)
        losses = steps.losses
        t2 = time.perf_counter()
        state = get_peft_model_state_dict(model)
        blob = adapter_to_bytes(
            state, spec.adapter_dtype, metadata={LORA_METADATA_KEY: spec.lora.model_dump_json()}
        )
    t3 = time.perf_counter()
    if not all(math.isfinite(x) for x in losses):
        raise RuntimeError(f"training diverged (loss {losses[-1]}); lower lr or use float32")
    result = TrainResult(
        adapter=blob,
        num_samples=len(examples),
        train_loss=float(sum(losses) / len(losses)),
        first_loss=float(losses[0]),
        steps=len(losses),
        train_tokens=steps.tokens,
        timings=TrainTimings(load_s=t1 - t0, train_s=t2 - t1, serialize_s=t3 - t2, fetch_s=fetch_s),
        started_at=started_at,
        finished_at=time.time(),
        device=str(device),
        host=socket.gethostname(),
        pid=os.getpid(),
        python=sys.executable,
        cache_hit=hit,
        **single_rank_telemetry(device, steps.busy_s, time.perf_counter() - t0),
    )
    return outgoing_adapter(spec, result).to_wire()


def single_rank_telemetry(device: torch.device, busy_s: float, wall_s: float) -> dict[str, Any]:
    """The telemetry fields (crossfl.client.telemetry) of a one-process task."""
    return {
        "ranks": 1,
        "nodes": 1,
        "devices_per_rank": 1,
        "device_type": device.type,
        "device_names": [device_name(device)],
        "dist_backend": None,
        "sharded": False,
        "accelerator_s": busy_s,
        "wall_s": wall_s,
    }
