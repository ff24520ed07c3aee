"""Site functions that do (almost) nothing, for measuring what the server and the engine add,
and for driving fault paths on a real engine: a worker that really dies, a task that really
raises.

They take the tasks of ``crossfl.client.contract`` and return its results, by reference and
inline alike, so the drivers run unchanged. They live in the client package because a worker
imports them by reference, wherever crossfl is installed.
"""

from __future__ import annotations

import os
import re
import shlex
import time
from pathlib import Path
from typing import Any

import torch

from crossfl.client.adapter_io import (
    adapter_from_bytes,
    adapter_to_bytes,
    fresh_adapter_from_shapes,
)
from crossfl.client.contract import (
    EvalResult,
    EvalTimings,
    LoraSpec,
    TrainResult,
    TrainTask,
    TrainTimings,
    train_result,
)
from crossfl.client.layout import adapter_shapes
from crossfl.client.transport import incoming_adapter, outgoing_adapter
from crossfl.errors import UserError

_SHAPES: dict[tuple[str, LoraSpec], dict[str, tuple[int, ...]]] = {}


def _fresh(task: TrainTask) -> dict[str, torch.Tensor]:
    """The seeded fresh adapter of the task's model and LoRA settings (its config only)."""
    key = (task.model_path, task.lora)
    if key not in _SHAPES:
        _SHAPES[key] = adapter_shapes(task.model_path, task.lora)
    return fresh_adapter_from_shapes(_SHAPES[key], task.seed)


def _adapter(task: TrainTask, fill: float | None = None) -> bytes:
    incoming, _ = incoming_adapter(task)
    state = adapter_from_bytes(incoming) if incoming is not None else _fresh(task)
    step = 0.001 * (1 + task.round % 7)
    state = {k: v.float() + step for k, v in state.items()}
    if fill is not None:
        state = {k: torch.full_like(v, fill) for k, v in state.items()}
    return adapter_to_bytes(state, task.adapter_dtype)


def _result(
    task: TrainTask, adapter: bytes, started: float, num_samples: int = 10
) -> dict[str, Any]:
    return outgoing_adapter(task, _train_result(task, adapter, started, num_samples)).to_wire()


def _train_result(task: TrainTask, adapter: bytes, started: float, num_samples: int) -> TrainResult:
    return train_result(
        adapter,
        num_samples=num_samples,
        losses=[1.0] * task.local_steps,  # a constant loss, for each step it did not take
        timings=TrainTimings(load_s=0.0, train_s=time.time() - started, serialize_s=0.0),
        started_at=started,
        cache_hit=True,
    )


def noop_train(task: dict[str, Any]) -> dict[str, Any]:
    """Returns the incoming adapter nudged by a constant: no model weights, no data (round 1's
    fresh adapter has the layout of the model's config)."""
    started = time.time()
    spec = TrainTask.from_wire(task)
    return _result(spec, _adapter(spec), started)


def noop_evaluate(task: dict[str, Any]) -> dict[str, Any]:
    return EvalResult(
        val_loss=1.0, num_samples=0, timings=EvalTimings(load_s=0.0, loss_s=0.0, generate_s=0.0)
    ).to_wire()


def wait_for_file(path: Path, give_up_s: float = 600.0) -> None:
    """Return once ``path`` exists (or after ``give_up_s``, so a broken test cannot hang)."""
    give_up = time.monotonic() + give_up_s
    while not path.exists() and time.monotonic() < give_up:
        time.sleep(0.05)


class Planted:
    """What a compromised site might send back: unpickling it runs ``touch PATH``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {shlex.quote(self.path)}",))


WRONG_FILES = ("devzero", "fifo", "symlink", "dotdot", "oversize")


def _by_reference(spec: TrainTask, name: str, started: float) -> dict[str, Any] | None:
    """A result that names a file it should not (data file names '*devzero*', '*fifo*',
    '*symlink*', '*dotdot*', '*oversize*', or '*rotate*': round r does WRONG_FILES[r-1]);
    None for other names."""
    assert spec.result_path is not None
    if "rotate" in name:
        name += WRONG_FILES[(spec.round - 1) % len(WRONG_FILES)]
    out = Path(spec.result_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if "devzero" in name:
        path = "/dev/zero"
    elif "fifo" in name:
        os.mkfifo(out)  # a reader that opens it blocks until someone writes
        path = str(out)
    elif "symlink" in name:
        out.symlink_to("/dev/zero")
        path = str(out)
    elif "dotdot" in name:
        escape = out.parent.parent.parent / "escape.safetensors"
        escape.write_bytes(_adapter(spec))
        path = f"{out.parent}/../../escape.safetensors"
    elif "oversize" in name:
        with out.open("wb") as f:
            f.truncate(64 * 1024 * 1024)  # sparse: larger than any adapter of the layout
        path = str(out)
    else:
        return None
    result = _train_result(spec, b"x", started, 10)
    return result.model_copy(update={"adapter": None, "adapter_path": path}).to_wire()


def faulty_train(task: dict[str, Any]) -> Any:
    """Behaviour chosen by the site's data file name: '*dies*' kills its worker on the first
    call, '*sleepN*' sleeps N seconds, '*nan*' returns a NaN adapter, '*far*' one far from the
    others, '*huge*' one of huge finite values, '*shapes*' one of another layout, '*inflated*'
    claims a billion samples, '*planted*' returns a ``Planted`` object, '*devzero*',
    '*fifo*', '*symlink*', '*dotdot*', '*oversize*' and '*rotate*' name a file they should
    not (``_by_reference``), '*usererror*' raises a UserError; '*waits*' waits until the file
    ``gate`` beside its data exists and then creates ``arrived`` there, '*opens*' creates
    ``gate`` from round 2 on and from round 3 on waits for ``arrived`` (so a test orders two
    sites' updates without racing a clock); then (or otherwise) it is noop_train."""
    started = time.time()
    spec = TrainTask.from_wire(task)
    name = Path(spec.data_path).name
    if "dies" in name:
        marker = Path(f"{spec.data_path}.died")
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
    gate, arrived = (Path(spec.data_path).with_name(n) for n in ("gate", "arrived"))
    if "opens" in name and spec.round >= 2:
        gate.touch()
    if "waits" in name:
        wait_for_file(gate)
        arrived.touch()
    if "opens" in name and spec.round >= 3:
        wait_for_file(arrived)
    nap = re.search(r"sleep(\d+(?:\.\d+)?)", name)
    if nap:
        time.sleep(float(nap.group(1)))
    if "usererror" in name:
        raise UserError("site data is unusable", field="data_path")
    if "planted" in name:
        return Planted(f"{spec.data_path}.pwned")
    wrong = _by_reference(spec, name, started) if spec.result_path else None
    if wrong is not None:
        return wrong
    if "nan" in name:
        return _result(spec, _adapter(spec, float("nan")), started)
    if "far" in name:
        return _result(spec, _adapter(spec, 1e3), started)
    if "huge" in name:
        return _result(spec, _adapter(spec, 3e38), started)
    if "shapes" in name:
        state = {k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) for k, v in _fresh(spec).items()}
        return _result(spec, adapter_to_bytes(state, spec.adapter_dtype), started)
    if "inflated" in name:
        return _result(spec, _adapter(spec), started, num_samples=10**9)
    return _result(spec, _adapter(spec), started)
