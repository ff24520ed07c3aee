"""A site's records and their tokens: reading a SMolInstruct file, the prompt and answer of a
record as token ids, right-padded batches and the seeded batch order.

The prompt is the record's ``input``, the target its ``output``; the loss counts only target
tokens. Nothing here imports peft or transformers (a tokenizer is anything with ``encode`` and
the ``*_token_id`` attributes), so the server counts a site's records with ``load_records``
without loading the training stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from crossfl.data.smolinstruct import Record, load_jsonl
from crossfl.errors import UserError

DATA_FIX = "run `make data` (or `crossfl data build-chem --out DIR`) and point data_path at it"
PROMPT_SUFFIX = "\n"
"""Appended to the instruction; the answer follows it."""


@dataclass(frozen=True)
class Example:
    ids: tuple[int, ...]
    prompt_len: int  # tokens before the answer; labels are -100 there


def load_records(data_path: str, max_samples: int | None) -> list[Record]:
    path = Path(data_path)
    if not path.exists():
        raise UserError(f"site data {path} does not exist", field="data_path", fix=DATA_FIX)
    records = load_jsonl(path, limit=max_samples)
    if not records:
        raise UserError(f"site data {path} holds no records", field="data_path", fix=DATA_FIX)
    return records


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
