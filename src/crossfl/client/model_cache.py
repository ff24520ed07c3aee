"""Process-level cache of the loaded base model, its tokenizer and its peft wrapper.

HPC workers live across rounds inside a pilot job, so only the first task a worker runs pays for
loading the base model; later rounds reuse it. The entry is keyed by the checkpoint (path and the
mtime of its config.json), the compute dtype and the device; the LoRA wrapper is rebuilt on the
cached base when a task asks for a different LoRA config. Callers must set the adapter weights
themselves on every use (``train.load_adapter_state``): what a previous round left in the wrapper
is never trusted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as hf_logging

from crossfl.client.adapter_io import torch_dtype
from crossfl.client.contract import COMPUTE_DTYPES, LoraSpec
from crossfl.errors import UserError

MODEL_FIX = "run `make model` (or `crossfl model build-tiny --data TRAIN.jsonl --out DIR`)"


def compute_dtype(name: str) -> torch.dtype:
    """The base model's compute dtype: float32, bfloat16 or float16."""
    return torch_dtype(name, allowed=COMPUTE_DTYPES, field="dtype")


@dataclass
class CachedModel:
    base: PreTrainedModel
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    peft: PeftModel | None = None
    lora: LoraSpec | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wrapped(self, lora: LoraSpec) -> PeftModel:
        """The peft model for ``lora``, built on the cached base (rebuilt if the config changed)."""
        if self.peft is not None and self.lora is not None:
            if self.lora.peft_options() == lora.peft_options():
                return self.peft
        if self.peft is not None:
            self.base = self.peft.unload()
            self.peft = None
        try:
            self.peft = get_peft_model(self.base, lora.peft_config())
        except ValueError as exc:
            self.lora = None
            raise UserError(
                f"LoRA config does not fit this model: {exc}",
                field="lora",
                fix="name modules the model has in lora.target_modules, e.g. q_proj, v_proj",
            ) from exc
        self.lora = lora
        return self.peft


_models: dict[tuple[str, float, str, str], CachedModel] = {}
_memo: dict[Hashable, Any] = {}
_lock = threading.Lock()


def check_model_path(model_path: str) -> Path:
    path = Path(model_path)
    if not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "holds no config.json"
        raise UserError(f"base model {path} {what}", field="model_path", fix=MODEL_FIX)
    return path


def get_model(model_path: str, dtype: str, device: torch.device) -> tuple[CachedModel, bool]:
    """The cached base model for (path, dtype, device), loading it on a miss.

    Returns the entry and whether it was a cache hit.
    """
    path = check_model_path(model_path)
    key = (str(path.resolve()), (path / "config.json").stat().st_mtime, dtype, str(device))
    with _lock:
        entry = _models.get(key)
        if entry is not None:
            return entry, True
        base, tokenizer = load_base(model_path, dtype)
        base.to(device)  # type: ignore[arg-type]  # transformers' functools.wraps on .to loses self
        entry = CachedModel(
            base=base, tokenizer=tokenizer, device=device, dtype=compute_dtype(dtype)
        )
        # One base model per worker: drop other checkpoints/dtypes this worker held.
        _models.clear()
        _memo.clear()
        _models[key] = entry
        return entry, False


def load_base(model_path: str, dtype: str) -> tuple[PreTrainedModel, Any]:
    """The base model (frozen, eval mode, in host memory) and its tokenizer, uncached: each
    rank of a multi-rank task loads its own before it places or shards it."""
    path = check_model_path(model_path)
    torch_dtype = compute_dtype(dtype)
    hf_logging.disable_progress_bar()  # no tqdm bars in worker logs
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        base = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"cannot load the base model from {path}: {exc}", field="model_path", fix=MODEL_FIX
        ) from exc
    base.eval()
    for p in base.parameters():
        p.requires_grad_(False)
    return base, tokenizer


def memo(key: Hashable, build: Callable[[], Any]) -> Any:
    """A small process-level memo for derived data (tokenized datasets), cleared with the model."""
    with _lock:
        if key in _memo:
            return _memo[key]
    value = build()
    with _lock:
        _memo[key] = value
    return value


def clear() -> None:
    """Forget every cached model and memo (tests; freeing memory)."""
    with _lock:
        _models.clear()
        _memo.clear()
