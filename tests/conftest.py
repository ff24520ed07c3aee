"""Shared fixtures. Keep this file small: helpers live in their own modules."""

from __future__ import annotations

import os
import sys
import unittest.mock as mock
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from testkit.sdk_client import RecordingClient

REAL_SERVICES = {"slurm_cluster", "bound_cluster", "sshd"}
"""Fixtures that start a real Slurm (bound_cluster: tests/test_slurm.py's, with GPUs) or sshd:
a test that needs one (directly or through another fixture) is marked slow."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if REAL_SERVICES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def sdk_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[RecordingClient]]:
    """globus_compute_sdk.Client substituted at its interface (testkit.sdk_client)."""
    import globus_compute_sdk

    RecordingClient.registered = []
    monkeypatch.setattr(globus_compute_sdk, "Client", RecordingClient)
    yield RecordingClient


@pytest.fixture
def stub_interfaces():
    """Loading a facility config resolves e.g. `hsn0`, absent here: answer 127.0.0.1."""
    import parsl.addresses

    with mock.patch.object(parsl.addresses, "address_by_interface", lambda ifname: "127.0.0.1"):
        yield


def run_on_engine(
    engine: Any, run_dir: Path, fn: Callable, *args: Any, timeout: float = 60.0
) -> Any:
    """Run one task on a GlobusComputeEngine the way an endpoint does: pack with the SDK's
    serializer, submit a messagepack Task, unpack the result. Shuts the engine down."""
    from globus_compute_common import messagepack
    from globus_compute_common.messagepack.message_types import Task
    from globus_compute_endpoint.engines.base import GCFuture
    from globus_compute_sdk.serialize import ComputeSerializer

    serde = ComputeSerializer()
    task_id = uuid.uuid4()
    buf = serde.pack_buffers([serde.serialize(fn), serde.serialize(args), serde.serialize({})])
    packed = messagepack.pack(Task(task_id=task_id, task_buffer=buf))
    # The interchange and worker pool are console scripts of the venv running the tests.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    with mock.patch.dict(os.environ, {"PATH": path}):
        engine.start(endpoint_id=uuid.uuid4(), run_dir=str(run_dir))
        try:
            fut = GCFuture(task_id)
            engine.submit(fut, packed, {})
            result = messagepack.unpack(fut.result(timeout=timeout))
        finally:
            engine.shutdown(block=True)
    if result.is_error:
        raise RuntimeError(f"task failed: {result.error_details}: {result.data}")
    return serde.deserialize(result.data)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A one-node Slurm cluster (tests/slurm_cluster.py) for the session; SLURM_CONF points at
    it. Skips, saying why, where it cannot run (not root, no slurm-wlm/munge)."""
    from slurm_cluster import SlurmCluster

    why = SlurmCluster.unavailable()
    if why:
        pytest.skip(why)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    before = os.environ.get("SLURM_CONF")
    try:
        cluster.start()
        os.environ["SLURM_CONF"] = str(cluster.conf)
        yield cluster
    finally:
        cluster.stop()
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
