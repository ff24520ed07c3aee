"""The functions the server submits to endpoints. They are serialized by reference, so they
stay top-level here and take and return plain data (dicts of str, int, float, bytes): the
models of ``crossfl.client.contract`` on the wire."""

from __future__ import annotations

from typing import Any

from crossfl.client import device as _device
from crossfl.client import evaluate as _evaluate
from crossfl.client import train as _train


def train_round(task: dict[str, Any]) -> dict[str, Any]:
    """One site's local LoRA training for one round; ``TrainTask`` in, ``TrainResult`` out."""
    return _train.train_round(task)


def evaluate(task: dict[str, Any]) -> dict[str, Any]:
    """Validation loss and exact match of an adapter; ``EvalTask`` in, ``EvalResult`` out."""
    return _evaluate.evaluate(task)


def describe(_: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the worker sees (device, backend, torch build): the endpoint smoke test."""
    return dict(_device.describe_devices())
