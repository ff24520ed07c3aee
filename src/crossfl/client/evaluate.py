"""Validation of a (global) adapter on site-local data: token-mean loss over answer tokens;
per task, how many tokens of the answer's value (the formula or the number inside the answer's
tags, not the tags) the model predicts right given the tokens before them, a figure that moves
with training long before whole answers come out right; and exact match of greedily generated
answers on a small capped sample."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from typing import Any

import torch
from peft import PeftModel

from crossfl.client import model_cache
from crossfl.client.adapter_io import LORA_METADATA_KEY, adapter_from_bytes, adapter_metadata
from crossfl.client.contract import EvalResult, EvalTask, EvalTimings, LoraSpec, Prediction
from crossfl.client.encoding import (
    Example,
    collate,
    encode_example,
    encode_prompt,
    load_records,
    pad_id,
)
from crossfl.client.train import load_adapter_state, worker_model
from crossfl.client.transport import incoming_adapter
from crossfl.data.smolinstruct import Record, answer_of
from crossfl.errors import UserError

FORMULA_TASK = "name_conversion-s2f"


def lora_for(spec: EvalTask, adapter: bytes) -> LoraSpec:
    if spec.lora is not None:
        return spec.lora
    meta = adapter_metadata(adapter).get(LORA_METADATA_KEY)
    if meta is None:
        raise UserError(
            "the adapter carries no LoRA config and the task names none",
            field="EvalTask.lora",
            fix="pass the experiment's lora settings (r, alpha, dropout, "
            "target_modules) as task['lora']",
        )
    try:
        return LoraSpec.model_validate(json.loads(meta))
    except ValueError as exc:
        raise UserError(f"bad LoRA config in the adapter header: {exc}", field="adapter") from exc


@contextlib.contextmanager
def active_model(
    entry: model_cache.CachedModel, spec: EvalTask, adapter: bytes | None
) -> Iterator[torch.nn.Module]:
    """The model to evaluate: the peft wrapper with ``adapter`` loaded, or the base alone
    (adapters disabled if the cached base carries a wrapper) when there is no adapter."""
    if adapter is None:
        if entry.peft is None:
            yield entry.base
        else:
            with entry.peft.disable_adapter():
                yield entry.peft
        return
    model: PeftModel = entry.wrapped(lora_for(spec, adapter))
    load_adapter_state(model, adapter_from_bytes(adapter))
    yield model


def value_positions(tokenizer: Any, record: Record, example: Example) -> list[int]:
    """Where, in ``example.ids``, the tokens of the record's value (``raw_output``, the text
    inside the answer's tags) lie: the answer tokens whose characters overlap it. Empty when
    the tokenizer gives no character offsets (a slow tokenizer) or the value is not found."""
    start = record.output.find(record.raw_output)
    if start < 0 or not record.raw_output:
        return []
    end = start + len(record.raw_output)
    try:
        enc = tokenizer(record.output, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError):
        return []
    ids, spans = list(enc["input_ids"]), enc["offset_mapping"]
    answer = example.ids[example.prompt_len :]
    if tuple(ids[: len(answer)]) != tuple(answer[: len(ids)]):
        return []  # not the tokens encode_example used (or cut): count nothing
    return [
        example.prompt_len + i
        for i, (a, b) in enumerate(spans[: len(answer)])
        if a < end and b > start
    ]


@torch.no_grad()
def validation_loss(
    model: torch.nn.Module,
    examples: list[Example],
    batch_size: int,
    pad: int,
    device: torch.device,
    values: list[list[int]] | None = None,
) -> tuple[float, int, list[tuple[int, int]]]:
    """Token-mean cross entropy over answer tokens, and the number of such tokens; per
    example, of the token positions in ``values``, how many the model predicts right (greedy,
    given the tokens before) and how many there are."""
    total, count = 0.0, 0
    hits: list[tuple[int, int]] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = collate(chunk, pad, device)
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits.float()
        labels = batch["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)),
            labels.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        total += float(loss)
        count += int((labels != -100).sum())
        predicted = logits[:, :-1].argmax(-1).cpu()  # position t predicts token t + 1
        ids = batch["input_ids"].cpu()
        for row, positions in enumerate((values or [])[start : start + len(chunk)]):
            right = sum(int(predicted[row, p - 1] == ids[row, p]) for p in positions)
            hits.append((right, len(positions)))
    return (total / count if count else math.nan), count, hits


def pick_for_generation(records: list[Record], cap: int) -> list[Record]:
    """Up to ``cap`` records, round-robin over tasks (the formula task first)."""
    by_task: dict[str, list[Record]] = {}
    for r in records:
        by_task.setdefault(r.task, []).append(r)
    order = sorted(by_task, key=lambda t: (t != FORMULA_TASK, t))
    picked: list[Record] = []
    depth = 0
    while len(picked) < cap and any(depth < len(by_task[t]) for t in order):
        for t in order:
            if depth < len(by_task[t]) and len(picked) < cap:
                picked.append(by_task[t][depth])
        depth += 1
    return picked


@torch.no_grad()
def generate_answers(
    model: torch.nn.Module,
    tokenizer: Any,
    records: list[Record],
    spec: EvalTask,
    device: torch.device,
) -> list[str]:
    """Greedy, batched, left-padded generation; returns the decoded new text per record."""
    pad = pad_id(tokenizer)
    eos = getattr(tokenizer, "eos_token_id", None)
    room = max(1, spec.max_length - spec.generate_max_new_tokens)
    out: list[str] = []
    for start in range(0, len(records), spec.batch_size):
        prompts = [
            encode_prompt(tokenizer, r.input)[-room:]
            for r in records[start : start + spec.batch_size]
        ]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        gen = model.generate(  # type: ignore[operator]  # torch types nn.Module.__getattr__ as Tensor | Module
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=spec.generate_max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=eos,
        )
        for row in gen[:, width:].tolist():
            out.append(tokenizer.decode(row, skip_special_tokens=True))
    return out


def evaluate(task: dict[str, Any]) -> dict[str, Any]:
    """Validation of an adapter: an ``EvalTask`` in, an ``EvalResult`` out (as plain data)."""
    t0 = time.perf_counter()
    spec = EvalTask.from_wire(task)
    adapter, _ = incoming_adapter(spec)
    device, entry, hit = worker_model(
        spec.model_path, spec.dtype, spec.torch_threads, spec.expect_device
    )
    records = load_records(spec.data_path, spec.max_samples)
    tok = entry.tokenizer
    examples = [encode_example(tok, r.input, r.output, spec.max_length) for r in records]
    values = [value_positions(tok, r, e) for r, e in zip(records, examples, strict=True)]
    with entry.lock, active_model(entry, spec, adapter) as model:
        model.eval()
        t1 = time.perf_counter()
        val_loss, tokens, value_hits = validation_loss(
            model, examples, spec.batch_size, pad_id(tok), device, values
        )
        t2 = time.perf_counter()
        sample = pick_for_generation(records, spec.generate_samples)
        predicted = generate_answers(model, tok, sample, spec, device) if sample else []
    t3 = time.perf_counter()
    hits: dict[str, list[bool]] = {}
    for r, text in zip(sample, predicted, strict=True):
        hits.setdefault(r.task, []).append(answer_of(text) == r.raw_output.strip())
    answer_tokens: dict[str, tuple[int, int]] = {}
    for r, (right, n) in zip(records, value_hits, strict=True):
        was = answer_tokens.get(r.task, (0, 0))
        answer_tokens[r.task] = (was[0] + right, was[1] + n)
    return EvalResult(
        val_loss=val_loss,
        num_samples=len(examples),
        num_tokens=tokens,
        answer_tokens={t: answer_tokens[t] for t in sorted(answer_tokens) if answer_tokens[t][1]},
        exact_match={t: sum(v) / len(v) for t, v in sorted(hits.items())},
        generated=len(sample),
        predictions=[
            Prediction(
                task=r.task, raw_input=r.raw_input, expected=r.raw_output, predicted=answer_of(text)
            )
            for r, text in list(zip(sample, predicted, strict=True))[:3]
        ],
        timings=EvalTimings(load_s=t1 - t0, loss_s=t2 - t1, generate_s=t3 - t2),
        cache_hit=hit,
        device=str(device),
    ).to_wire()
