"""An offline base model for demos and tests: a small Llama-architecture causal LM and a BPE
tokenizer trained on the dataset's own text, saved with ``save_pretrained`` so that
``AutoModelForCausalLM.from_pretrained(DIR)`` / ``AutoTokenizer.from_pretrained(DIR)`` load it
exactly as they load a real checkpoint on a facility filesystem.

The base is briefly pre-trained as a plain LM on the instructions and, as separate documents, on
the answers (never an instruction next to its answer): it knows the tokens, the prompt
wording and the answer format, but not the mapping from question to answer, which is what the
federated LoRA rounds then learn.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from pydantic import BaseModel, Field, ValidationError, model_validator
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from crossfl.atomic import new_dir
from crossfl.data.smolinstruct import load_jsonl
from crossfl.errors import UserError
from crossfl.schema import StrictModel, problems

PAD, BOS, EOS = "<pad>", "<s>", "</s>"

Progress = Callable[[str, int, int], None]
"""progress(stage, done, total): called while building."""


class TinyModelSpec(StrictModel):
    """Shape of the tiny base model and its pre-training budget."""

    vocab_size: int = Field(1000, ge=300, le=32000)
    hidden_size: int = Field(128, ge=16)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(256, ge=16)
    max_position: int = Field(256, ge=32)
    pretrain_steps: int = Field(200, ge=0)
    pretrain_batch: int = Field(16, ge=1)
    pretrain_seq_len: int = Field(128, ge=16)
    pretrain_lr: float = Field(3e-3, gt=0)
    max_records: int | None = Field(None, ge=1)
    seed: int = 0
    threads: int | None = Field(1, ge=1)
    """torch threads (None: torch's default). One by default: on two busy shared cores, two
    threads made a build five times slower than one (593 s against 113 s wall)."""

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> TinyModelSpec:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden size {self.hidden_size} is not a multiple of the "
                f"number of heads {self.num_heads}"
            )
        return self


_OPTION_NAMES = {"num_layers": "--layers", "num_heads": "--heads"}


def make_spec(**values: object) -> TinyModelSpec:
    """A spec from user-given values; a bad value is a UserError naming the option."""
    try:
        return TinyModelSpec.model_validate(values)
    except ValidationError as exc:
        first = problems(exc)[0]
        name = (
            _OPTION_NAMES.get(first.field, "--" + first.field.replace("_", "-"))
            if first.field
            else None
        )
        raise UserError(first.message, field=name) from None


class TinyModelSummary(BaseModel):
    out: str
    parameters: int
    vocab_size: int
    bytes_on_disk: int
    pretrain_steps: int
    pretrain_first_loss: float | None
    pretrain_last_loss: float | None
    seconds: float


def _corpus(data: Path, max_records: int | None) -> tuple[list[str], list[str]]:
    """Instructions and answers of the training file, as two lists of documents."""
    if not data.exists():
        raise UserError(
            "training data does not exist",
            file=data,
            fix="run `make data` (or `crossfl data build-chem --out DIR`) first",
        )
    records = load_jsonl(data, limit=max_records)
    if not records:
        raise UserError(
            "the training file holds no records", file=data, fix="rebuild it with `make data`"
        )
    return [r.input for r in records], [r.output for r in records]


def train_tokenizer(
    texts: Sequence[str], vocab_size: int, max_length: int
) -> PreTrainedTokenizerFast:
    """Byte-level BPE (every string encodes, decoding is exact) with pad/bos/eos specials."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def build_model(spec: TinyModelSpec, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=spec.max_position,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.02,
    )
    torch.manual_seed(spec.seed)
    return LlamaForCausalLM(config)


def _token_stream(docs: Sequence[str], tokenizer: PreTrainedTokenizerFast) -> torch.Tensor:
    ids: list[int] = []
    for doc in docs:
        ids.append(tokenizer.bos_token_id)
        ids.extend(tokenizer.encode(doc, add_special_tokens=False))
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def pretrain(
    model: LlamaForCausalLM,
    stream: torch.Tensor,
    spec: TinyModelSpec,
    progress: Progress | None = None,
) -> list[float]:
    """Plain next-token LM on random windows of the token stream; cosine-decayed AdamW."""
    steps, seq = spec.pretrain_steps, min(spec.pretrain_seq_len, spec.max_position)
    if steps == 0:
        return []
    if stream.numel() <= seq + 1:
        raise UserError(
            f"the training text is too short to pre-train on ({stream.numel()} tokens)",
            fix="use a larger training file or --pretrain-steps 0",
        )
    gen = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.pretrain_lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    offsets = torch.arange(seq)
    losses: list[float] = []
    model.train()
    for step in range(steps):
        starts = torch.randint(0, stream.numel() - seq, (spec.pretrain_batch,), generator=gen)
        batch = stream[starts[:, None] + offsets]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if progress is not None:
            progress("pre-train", step + 1, steps)
    model.eval()
    return losses


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _make_readable(path: Path) -> None:
    """mkdtemp makes 0700 dirs; a shared model directory must be readable by workers."""
    os.chmod(path, 0o755)
    for p in path.rglob("*"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


def build_tiny(
    data: Path, out: Path, spec: TinyModelSpec | None = None, progress: Progress | None = None
) -> TinyModelSummary:
    """Train the tokenizer, build and pre-train the model, save both into ``out`` atomically."""
    spec = spec or TinyModelSpec()
    started = time.perf_counter()
    data, out = Path(data), Path(out)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    inputs, outputs = _corpus(data, spec.max_records)
    if progress is not None:
        progress("tokenizer", 0, 1)
    tokenizer = train_tokenizer(inputs + outputs, spec.vocab_size, spec.max_position)
    if progress is not None:
        progress("tokenizer", 1, 1)
    model = build_model(spec, tokenizer)
    # Instructions and answers as separate documents, in a seeded shuffled order.
    docs = inputs + outputs
    order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(spec.seed))
    losses = pretrain(model, _token_stream([docs[i] for i in order], tokenizer), spec, progress)

    hf_logging.disable_progress_bar()
    with new_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _make_readable(tmp)
    return TinyModelSummary(
        out=str(out),
        parameters=sum(p.numel() for p in model.parameters()),
        vocab_size=len(tokenizer),
        bytes_on_disk=_dir_bytes(out),
        pretrain_steps=len(losses),
        pretrain_first_loss=losses[0] if losses else None,
        pretrain_last_loss=losses[-1] if losses else None,
        seconds=time.perf_counter() - started,
    )
