"""globus_sdk.TransferClient at its interface, for tests: collections are directories here."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any


class FakeTransferClient:
    """globus_sdk.TransferClient at its interface: collections are directories here."""

    def __init__(self, roots: dict[str, Path]) -> None:
        self.roots, self.tasks, self.submitted = roots, {}, []

    def submit_transfer(self, data: Any) -> dict[str, str]:
        src, dst = self.roots[data["source_endpoint"]], self.roots[data["destination_endpoint"]]
        for item in data["DATA"]:
            target = dst / item["destination_path"].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / item["source_path"].lstrip("/"), target)
        task_id = str(uuid.uuid4())
        self.tasks[task_id] = {"status": "SUCCEEDED"}
        self.submitted.append(dict(data))
        return {"task_id": task_id}

    def task_wait(self, task_id: str, *, timeout: int = 10, polling_interval: int = 10) -> bool:
        return task_id in self.tasks

    def get_task(self, task_id: str) -> dict[str, str]:
        return self.tasks[task_id]
