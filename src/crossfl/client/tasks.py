"""The functions the server submits to endpoints. They are serialized by reference, so they
stay top-level here and take and return plain data (dicts of str, int, float, bytes): the
models of ``crossfl.client.contract`` on the wire.

The server names these functions without running them, so this module imports the training
stack (torch's models, transformers, peft) only inside them: importing it costs the server
nothing."""

from __future__ import annotations

from typing import Any

from crossfl.client.contract import TrainTask


def train_round(task: dict[str, Any]) -> dict[str, Any]:
    """One site's local LoRA training for one round; ``TrainTask`` in, ``TrainResult`` out.
    With ``ranks_per_node`` above 1 (or "auto" on a worker holding several devices) the task
    runs data-parallel on that many ranks of this worker."""
    from crossfl.client import launch, train

    spec = TrainTask.from_wire(task)
    ranks = launch.resolve_ranks(spec.ranks_per_node) if spec.ranks_per_node != 1 else 1
    if ranks > 1:
        return launch.train_on_local_devices(spec, ranks)
    return train.train_round(task)


def evaluate(task: dict[str, Any]) -> dict[str, Any]:
    """Validation loss and exact match of an adapter; ``EvalTask`` in, ``EvalResult`` out."""
    from crossfl.client.evaluate import evaluate as run

    return run(task)


def describe(_: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the worker sees (device, backend, torch build): the endpoint smoke test."""
    from crossfl.client.device import describe_devices

    return dict(describe_devices())
