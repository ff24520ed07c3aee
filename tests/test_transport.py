"""crossfl.server.transport: results read confined to the transfer directory, the
transport mode per site and size, and the Globus Transfer path (the TransferClient
substituted at its interface: testkit.globus_transfer)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from testkit.globus_transfer import FakeTransferClient
from testkit.plans import experiment, plan_of

from crossfl.client import tasks
from crossfl.client.adapter_io import adapter_to_bytes
from crossfl.client.contract import TrainResult, TrainTask
from crossfl.endpoints import ResultRefused
from crossfl.errors import UserError
from crossfl.server.transport import GlobusMover, TransferFailed, Transport, read_confined


def write_fifo(path: Path) -> None:
    os.mkfifo(path)


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p: p.write_bytes(b"ok"), None),
        (write_fifo, "is a FIFO"),
        (lambda p: p.symlink_to("/dev/zero"), "is a symbolic link"),
        (lambda p: p.write_bytes(b"x" * 101), "holds over 100 bytes"),
        (lambda p: p.parent.rename(p.parent.with_name("real")) or None, None),
    ],
    ids=["file", "fifo", "link", "oversize", "missing"],
)
def test_a_result_file_is_read_only_when_it_is_a_small_regular_file(
    tmp_path: Path, make: Any, words: str | None
) -> None:
    (tmp_path / "results").mkdir()
    target = tmp_path / "results" / "r.safetensors"
    make(target)
    if not (tmp_path / "results").exists():
        with pytest.raises(FileNotFoundError):
            read_confined(tmp_path, "results/r.safetensors", 100, "site x's adapter")
        return
    if words is None:
        assert read_confined(tmp_path, "results/r.safetensors", 100, "site x's adapter") == b"ok"
        return
    with pytest.raises(ResultRefused) as info:
        read_confined(tmp_path, "results/r.safetensors", 100, "site x's adapter")
    assert str(info.value).startswith("site x's adapter: results/r.safetensors") and words in str(
        info.value
    )


def test_a_linked_result_directory_is_refused(tmp_path: Path) -> None:
    """The site swaps its results directory for a link elsewhere: nothing below it is read."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "r.safetensors").write_bytes(b"secret")
    (tmp_path / "transport").mkdir()
    (tmp_path / "transport" / "results").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ResultRefused, match="symbolic link"):
        read_confined(tmp_path / "transport", "results/r.safetensors", 100, "site x's adapter")


TASK = TrainTask(model_path="/m", data_path="/d", local_steps=1, batch_size=1, lr=0.1)


def test_transport_mode_follows_size_and_site_settings(tmp_path: Path) -> None:
    exp = experiment(tmp_path, transport={"inline_limit_mb": 1})
    t = Transport(plan_of(exp, {"alpha", "beta"}), tmp_path / "run")
    assert t.mode_for("alpha", 1000) == "inline"
    assert t.mode_for("alpha", 2_000_000) == "shared_fs"  # local sites share the run directory
    with pytest.raises(UserError, match="inline limit"):
        t.mode_for("gamma", 2_000_000)  # a remote site with no shared dir or collection
    assert t.mode_for("gamma", None) == "inline"


def test_globus_transfer_moves_adapters_both_ways(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_id, site_id = str(uuid.uuid4()), str(uuid.uuid4())
    server_root, site_root = tmp_path / "server-coll", tmp_path / "site-coll"
    fake = FakeTransferClient({server_id: server_root, site_id: site_root})
    exp = experiment(
        tmp_path,
        transport={
            "globus": {
                "collection": server_id,
                "path": "/crossfl",
                "local_path": str(server_root / "crossfl"),
            }
        },
        sites=[
            {"name": "alpha", "site": "local"},
            {
                "name": "far",
                "site": "polaris",
                "transport": {
                    "mode": "globus_transfer",
                    "globus": {
                        "collection": site_id,
                        "path": "/eagle/x",
                        "local_path": str(site_root / "eagle" / "x"),
                    },
                },
            },
        ],
    )
    t = Transport(plan_of(exp, {"alpha"}), tmp_path / "run-1", transfer_client=lambda: fake)
    adapter = adapter_to_bytes({"l.lora_A.weight": torch.ones(2, 2)})
    out = t.train("far", TASK, adapter, version=3)
    assert out.mode == "globus_transfer" and out.fn is tasks.train_round
    assert out.payload["adapter"] is None and out.bytes_down == len(adapter)
    assert TrainTask.from_wire(out.payload).inline_limit_bytes == 7_000_000
    assert Path(out.payload["adapter_path"]).read_bytes() == adapter  # arrived at the site
    item = fake.submitted[0]["DATA"][0]
    assert item["source_path"] == "/crossfl/run-1/global-v3.safetensors"
    assert item["destination_path"] == "/eagle/x/run-1/global-v3.safetensors"
    assert fake.submitted[0]["verify_checksum"] is True
    # the site writes its result where the task said; the server fetches it back
    result_at_site = Path(out.payload["result_path"])
    result_at_site.parent.mkdir(parents=True, exist_ok=True)
    result_at_site.write_bytes(adapter + b"")
    incoming = t.receive(
        "far", TrainResult.model_construct(adapter=None, adapter_path=str(result_at_site)), out
    )
    assert (
        incoming.adapter == adapter
        and incoming.bytes_up == len(adapter)
        and len(fake.submitted) == 2
    )
    # a path that starts with the transfer directory but climbs out of it is refused unread
    escape = f"{result_at_site.parent}/../../../../etc/passwd"
    assert escape.startswith("/".join(out.payload["result_path"].split("/")[:-2]))
    with pytest.raises(ResultRefused, match="not the result file its task gave"):
        t.receive("far", TrainResult.model_construct(adapter=None, adapter_path=escape), out)
    assert len(fake.submitted) == 2  # nothing was fetched for it
    # the same global version goes to a site once
    t.train("far", TASK, adapter, version=3)
    assert len(fake.submitted) == 2
    # a transfer that does not succeed is an error the driver records (and retries as a system failure)
    failing = FakeTransferClient({server_id: server_root, site_id: site_root})
    failing.get_task = lambda task_id: {"status": "FAILED"}  # type: ignore[method-assign]
    mover = GlobusMover(failing, exp.transport.globus, timeout_s=5)
    with pytest.raises(TransferFailed, match="FAILED"):
        mover.send(exp.sites[1].transport.globus, "run-1/global-v3.safetensors", "again")
