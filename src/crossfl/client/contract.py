"""The contract between the server and a site: what a task carries and what it returns.

Both sides import these models. The server builds every task from them; the site validates
every task against them (one ``UserError`` naming the field). Through Globus Compute they
travel as plain data: a task's ``to_wire()`` gives a dict of str, int, float, bytes and lists;
a result's is JSON data (bytes as base64 text), which is all the server accepts back from a
site (``crossfl.endpoints.SiteSerializer``). ``from_wire()`` checks one. A site is not
trusted: every field of a result is bounded (sizes, lengths, counts, finite numbers) before
the server uses it. Adding a field to a task touches this file, and the line that fills it.
Paths are absolute: a relative one would resolve against a worker's working directory, which
is never what was meant.
"""

from __future__ import annotations

import base64
import binascii
import os
import socket
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    model_validator,
)

from crossfl.errors import UserError
from crossfl.schema import StrictModel, user_error

if TYPE_CHECKING:
    from peft import LoraConfig

ComputeDType = Literal["float32", "bfloat16", "float16"]
"""The base model's dtype at the site."""
WireDType = Literal["float32", "bfloat16"]
"""The adapter's dtype between server and site."""
WIRE_DTYPES: tuple[str, ...] = get_args(WireDType)
COMPUTE_DTYPES: tuple[str, ...] = get_args(ComputeDType)

MAX_INLINE_BYTES = 10 * 1024 * 1024
"""No adapter travels inside a task or a result beyond an endpoint's result cap (10 MiB)."""


def _wire_bytes(value: Any) -> bytes:
    """bytes, or the base64 text a result carries them as."""
    if isinstance(value, str):
        if len(value) > (MAX_INLINE_BYTES + 2) // 3 * 4:
            raise ValueError(f"over {MAX_INLINE_BYTES} bytes inline: send it by reference")
        try:
            value = binascii.a2b_base64(value, strict_mode=True)
        except (binascii.Error, ValueError):
            raise ValueError("neither bytes nor base64 text") from None
    if not isinstance(value, bytes):
        raise ValueError(f"expected bytes, got {type(value).__name__}")
    if len(value) > MAX_INLINE_BYTES:
        raise ValueError(f"over {MAX_INLINE_BYTES} bytes inline: send it by reference")
    return value


Bytes = Annotated[
    bytes,
    PlainValidator(_wire_bytes),
    PlainSerializer(lambda b: base64.b64encode(b).decode("ascii"), when_used="json"),
]
"""Bytes on the wire: as they are in a task, base64 text in a result (JSON)."""


def inline_nbytes(value: bytes | str | None) -> int:
    """Bytes of an inline adapter as a task (bytes) or a result (base64 text) carries it."""
    if isinstance(value, str):
        return len(value) // 4 * 3 - value[-2:].count("=")
    return len(value or b"")


MAX_RANKS = 1 << 20
Name = Annotated[str, Field(max_length=256)]
Seconds = Annotated[float, Field(ge=0)]
Count = Annotated[int, Field(ge=0, le=1 << 50)]


def _absolute(path: str) -> str:
    if not os.path.isabs(path):
        raise ValueError(f"{path!r} is relative; a site needs an absolute path")
    return path


AbsolutePath = Annotated[str, Field(min_length=1), AfterValidator(_absolute)]

M = TypeVar("M", bound="Message")


class Message(StrictModel):
    """A task or a result: unknown fields are errors."""

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_wire(cls: type[M], data: Any) -> M:
        """Validate plain data; the first bad field becomes one UserError naming it."""
        if not isinstance(data, dict):
            raise UserError(f"a {cls.__name__} must be a dict, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise user_error(
                exc,
                field_prefix=cls.__name__,
                raw=data,
                schema=f"crossfl.client.contract.{cls.__name__}",
            ) from None


class Result(Message):
    """What a site sends back: JSON data on the wire, every number finite and every string,
    list and count bounded (a site's result is not trusted)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_max_length=4096)

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class LoraSpec(Message):
    """The LoRA settings: the experiment's `lora:` section, what a task carries and what an
    adapter's metadata records. The one place that turns them into peft's config, as data
    (``peft_options``, which the server writes beside the final adapter without importing
    peft) and as peft's ``LoraConfig`` (``peft_config``, on the site)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: tuple[str, ...] = Field(("q_proj", "v_proj"), min_length=1)

    def peft_options(self) -> dict[str, Any]:
        """peft's ``LoraConfig`` arguments (its adapter_config.json keys) for these settings;
        the target modules sorted, so two orders of one set are one config."""
        return {
            "r": self.r,
            "lora_alpha": float(self.alpha),
            "lora_dropout": float(self.dropout),
            "target_modules": sorted(self.target_modules),
            "bias": "none",
            "task_type": "CAUSAL_LM",
        }

    def peft_config(self) -> LoraConfig:
        """peft's ``LoraConfig`` for these settings (peft is imported here, on the site only:
        the server never imports it)."""
        from peft import LoraConfig

        return LoraConfig(**self.peft_options())


class SiteTask(Message):
    """What every task names: the base model, the site-local data and the incoming adapter
    (its bytes, or a file the site reads: a shared filesystem or a Globus Transfer's
    destination)."""

    model_path: AbsolutePath
    data_path: AbsolutePath
    adapter: Bytes | None = None
    adapter_path: AbsolutePath | None = None
    max_length: int = Field(128, ge=8)
    dtype: ComputeDType = "float32"
    max_samples: int | None = Field(None, ge=1)
    torch_threads: int | None = Field(None, ge=1)
    expect_device: Literal["cuda", "rocm", "xpu", "cpu"] | None = Field(
        None,
        description="the device the site's catalog lists (crossfl.sites.Site."
        "expect_device): the task fails, naming what it saw, rather than run elsewhere",
    )

    @model_validator(mode="after")
    def _one_adapter(self) -> SiteTask:
        if self.adapter is not None and self.adapter_path is not None:
            raise ValueError("a task carries both adapter and adapter_path; send one of them")
        return self


class TrainTask(SiteTask):
    """One site's training for one round."""

    local_steps: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    lora: LoraSpec = LoraSpec()
    adapter_dtype: WireDType = "float32"
    seed: int = 0
    round: int = Field(0, ge=0)
    result_path: AbsolutePath | None = Field(
        None, description="write the trained adapter here when it is over inline_limit_bytes"
    )
    inline_limit_bytes: int | None = Field(None, ge=0)
    ranks_per_node: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        1,
        description='processes this task starts on its worker, one per device ("auto": '
        "every device the worker sees, 1 on cpu); 1 is the single-process path. batch_size is "
        "per rank: a global batch holds batch_size x ranks examples. A task started by an MPI "
        "launcher (`run-task --distributed`) takes its ranks from the launcher instead",
    )
    shard: Literal["auto", "never", "always"] = Field(
        "auto",
        description="FSDP2-shard the frozen base model across the ranks; auto: when it "
        "takes more than half of one rank's device memory (crossfl.client.sharding)",
    )


class EvalTask(SiteTask):
    """Validation of an adapter (or of the base model alone) on the site's data."""

    lora: LoraSpec | None = None
    batch_size: int = Field(16, ge=1)
    generate_max_new_tokens: int = Field(24, ge=1)
    generate_samples: int = Field(32, ge=0)


class TrainTimings(Result):
    load_s: Seconds
    train_s: Seconds
    serialize_s: Seconds
    fetch_s: Seconds = 0.0  # reading the incoming adapter from adapter_path
    store_s: Seconds = 0.0  # writing the result to result_path


class TrainResult(Result):
    adapter: Bytes | None = None
    adapter_path: str | None = None  # where the site wrote it (result_path), when not inline
    adapter_nbytes: Count | None = None
    num_samples: Count
    train_loss: float
    first_loss: float
    steps: Count
    timings: TrainTimings
    started_at: float
    finished_at: float
    device: Name
    host: Name
    pid: Count
    cache_hit: bool
    python: str | None = None  # the interpreter that ran it (an image's, or the site's venv)
    train_tokens: Count = 0  # tokens of the global batches, no padding
    # How the task used its node(s) (crossfl.client.telemetry holds the definitions):
    ranks: int = Field(1, ge=1, le=MAX_RANKS)
    nodes: int = Field(1, ge=1, le=MAX_RANKS)
    devices_per_rank: int = Field(1, ge=1, le=MAX_RANKS)
    device_type: Name = "cpu"
    device_names: list[Name] = Field(default_factory=list, max_length=MAX_RANKS)  # rank order
    dist_backend: Name | None = None
    sharded: bool = False
    accelerator_s: Seconds = 0.0  # sum over ranks of device-seconds in steps
    train_window_s: Seconds = 0.0  # the training loop's wall (the slowest rank's)
    wall_s: Seconds = 0.0  # the task's wall seconds on the worker
    # A replay's site (crossfl.simulate) says which pilot ran the task and what was simulated.
    simulated: dict[Name, Name | int | float | bool | None] | None = Field(None, max_length=64)

    @model_validator(mode="after")
    def _has_adapter(self) -> TrainResult:
        if (self.adapter is None) == (self.adapter_path is None):
            raise ValueError("a result carries exactly one of adapter and adapter_path")
        return self


def train_result(
    adapter: bytes,
    *,
    num_samples: int,
    losses: Sequence[float],
    timings: TrainTimings,
    started_at: float,
    cache_hit: bool,
    device: str = "cpu",
    **placement: Any,
) -> TrainResult:
    """The one way a site builds its TrainResult (the training task's and the probes'): the
    mean and first of the per-step ``losses``, the step count, and who ran it (this host,
    process and interpreter), finished now; ``placement`` is the rest (ranks, nodes, ...)."""
    return TrainResult(
        adapter=adapter,
        num_samples=num_samples,
        train_loss=float(sum(losses) / len(losses)),
        first_loss=float(losses[0]),
        steps=len(losses),
        timings=timings,
        started_at=started_at,
        finished_at=time.time(),
        device=device,
        host=socket.gethostname(),
        pid=os.getpid(),
        python=sys.executable,
        cache_hit=cache_hit,
        **placement,
    )


class EvalTimings(Result):
    load_s: Seconds
    loss_s: Seconds
    generate_s: Seconds


class Prediction(Result):
    task: Name
    raw_input: str = Field(max_length=65536)
    expected: str = Field(max_length=65536)
    predicted: str = Field(max_length=65536)


class EvalResult(Result):
    model_config = ConfigDict(allow_inf_nan=True)  # val_loss is NaN without answer tokens

    val_loss: float
    num_samples: Count
    num_tokens: Count = 0
    # per task: [tokens of the answer's value (the formula or number inside its tags) the model
    # predicts right given the ones before them, greedy; all such tokens]
    answer_tokens: dict[Name, tuple[Count, Count]] = Field(default_factory=dict, max_length=1024)
    exact_match: dict[Name, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=dict, max_length=1024
    )
    generated: Count = 0
    predictions: list[Prediction] = Field(default_factory=list, max_length=1024)
    timings: EvalTimings
    cache_hit: bool = False
    device: Name = "cpu"

    @model_validator(mode="after")
    def _right_within_all(self) -> EvalResult:
        for task, (right, total) in self.answer_tokens.items():
            if right > total:
                raise ValueError(f"answer_tokens[{task!r}]: {right} right of {total} tokens")
        return self
