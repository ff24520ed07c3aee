"""The contract between the server and a site: what a task carries and what it returns.

Both sides import these models. The server builds every task from them; the site validates
every task against them (one ``UserError`` naming the field). Through Globus Compute they
travel as plain data: ``to_wire()`` gives a dict of str, int, float, bytes and lists, and
``from_wire()`` checks one. Adding a field to a task touches this file, and the line that
fills it. Paths are absolute: a relative one would resolve against a worker's working
directory, which is never what was meant.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    model_validator,
)

from crossfl.errors import UserError
from crossfl.schema import StrictModel, user_error

ComputeDType = Literal["float32", "bfloat16", "float16"]
"""The base model's dtype at the site."""
WireDType = Literal["float32", "bfloat16"]
"""The adapter's dtype between server and site."""
WIRE_DTYPES: tuple[str, ...] = get_args(WireDType)
COMPUTE_DTYPES: tuple[str, ...] = get_args(ComputeDType)

Bytes = Annotated[bytes, Strict()]


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


class LoraSpec(Message):
    model_config = ConfigDict(extra="forbid", frozen=True)

    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: tuple[str, ...] = Field(("q_proj", "v_proj"), min_length=1)


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


class TrainTimings(Message):
    load_s: float
    train_s: float
    serialize_s: float
    fetch_s: float = 0.0  # reading the incoming adapter from adapter_path
    store_s: float = 0.0  # writing the result to result_path


class TrainResult(Message):
    adapter: Bytes | None = None
    adapter_path: str | None = None  # where the site wrote it (result_path), when not inline
    adapter_nbytes: int | None = None
    num_samples: int = Field(ge=0)
    train_loss: float
    first_loss: float
    steps: int = Field(ge=0)
    timings: TrainTimings
    started_at: float
    finished_at: float
    device: str
    host: str
    pid: int
    cache_hit: bool
    python: str | None = None  # the interpreter that ran it (an image's, or the site's venv)
    train_tokens: int = Field(0, ge=0)  # tokens of the global batches, no padding
    # How the task used its node(s) (crossfl.client.telemetry holds the definitions):
    ranks: int = Field(1, ge=1)
    nodes: int = Field(1, ge=1)
    devices_per_rank: int = Field(1, ge=1)
    device_type: str = "cpu"
    device_names: list[str] = Field(default_factory=list)  # one per rank, in rank order
    dist_backend: str | None = None
    sharded: bool = False
    accelerator_s: float = Field(0.0, ge=0)  # sum over ranks of device-seconds in steps
    train_window_s: float = Field(0.0, ge=0)  # the training loop's wall (the slowest rank's)
    wall_s: float = Field(0.0, ge=0)  # the task's wall seconds on the worker
    # A replay's site (crossfl.simulate) says which pilot ran the task and what was simulated.
    simulated: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _has_adapter(self) -> TrainResult:
        if (self.adapter is None) == (self.adapter_path is None):
            raise ValueError("a result carries exactly one of adapter and adapter_path")
        return self


class EvalTimings(Message):
    load_s: float
    loss_s: float
    generate_s: float


class Prediction(Message):
    task: str
    raw_input: str
    expected: str
    predicted: str


class EvalResult(Message):
    val_loss: float
    num_samples: int = Field(ge=0)
    num_tokens: int = Field(0, ge=0)
    # per task: [tokens of the answer's value (the formula or number inside its tags) the model
    # predicts right given the ones before them, greedy; all such tokens]
    answer_tokens: dict[str, tuple[int, int]] = Field(default_factory=dict)
    exact_match: dict[str, float] = Field(default_factory=dict)
    generated: int = 0
    predictions: list[Prediction] = Field(default_factory=list)
    timings: EvalTimings
    cache_hit: bool = False
    device: str = "cpu"
