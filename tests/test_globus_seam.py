"""Deployed facilities go through `globus_compute_sdk.Executor(endpoint_id=...)`. Offline, that
one class is substituted at its interface by one that forwards to a real local engine; the round
loop, serialization and result handling are the real ones."""

from __future__ import annotations

import json
import shutil
import uuid
from concurrent.futures import Future
from datetime import UTC
from pathlib import Path
from typing import Any

import globus_compute_sdk
import pytest
import yaml
from globus_compute_sdk.serialize.facade import validate_strategylike
from rich.console import Console

from crossfl.data.chem import build_chem
from crossfl.endpoints import JSON_RESULTS, LocalEngineExecutor, SiteSerializer
from crossfl.errors import UserError
from crossfl.render import render_site, render_user_config
from crossfl.server.experiment import load_experiment
from crossfl.server.lifecycle import run_experiment
from crossfl.state import DeployState, EndpointState, save_state
from crossfl.tiny_model import TinyModelSpec, build_tiny

pytestmark = pytest.mark.slow  # federations on real engines (`make test-fast` leaves them out)

ROOT = Path(__file__).resolve().parents[1]


class ForwardingExecutor:
    """Stands in for globus_compute_sdk.Executor: same constructor keywords and Executor
    interface; the Globus service relay is replaced by a local GlobusComputeEngine."""

    instances: list[ForwardingExecutor] = []
    engine_root: Path

    def __init__(
        self,
        endpoint_id: str | None = None,
        client: Any = None,
        task_group_id: Any = None,
        resource_specification: dict | None = None,
        user_endpoint_config: dict | None = None,
        label: str = "",
        batch_size: int = 128,
        amqp_port: int | None = None,
        api_burst_limit: int = 4,
        api_burst_window_s: int = 16,
        serializer: Any = None,
        result_serializers: Any = None,
        **_: Any,
    ) -> None:
        assert endpoint_id is not None
        self.endpoint_id = str(endpoint_id)
        self.user_endpoint_config = user_endpoint_config
        self.label = label
        self.serializer = serializer
        self.submitted = 0
        self.registry: dict[Any, str] = {}  # as the SDK's: function -> id
        self.by_id: list[str | None] = []  # the id each submission went by (None: none)
        site_dir = render_site("local", out_root=self.engine_root / "sites")
        config = render_user_config(site_dir, {"max_workers_per_node": 1})
        # what the SDK Executor would do with what it was given: pack with `serializer`, ask
        # the endpoint for `result_serializers` (as import paths), read results with it
        self.result_serializers = [
            validate_strategylike(v).import_path for v in result_serializers or []
        ]
        self._engine = LocalEngineExecutor(
            label,
            config,
            self.engine_root / f"engine-{len(self.instances)}",
            serializer=serializer,
            results=self.result_serializers,
        )
        ForwardingExecutor.instances.append(self)

    def register_function(self, fn: Any, function_id: str | None = None, **_: Any) -> str:
        # without an id the SDK would register the function anew: an endpoint whose
        # allowed_functions name the deploy's ids refuses that one
        assert function_id, "the server names the ids deploy registered"
        self.registry[fn] = function_id
        return function_id

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future:
        self.submitted += 1
        self.by_id.append(self.registry.get(fn))
        return self._engine.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._engine.shutdown()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gproject")
    (root / "deploy").mkdir()
    shutil.copytree(ROOT / "deploy" / "sites", root / "deploy" / "sites")
    (root / "site_templates").symlink_to(ROOT / "site_templates")
    build_chem(root / "data", seed=0, max_molecules=120)
    spec = TinyModelSpec(
        vocab_size=400,
        hidden_size=64,
        num_layers=2,
        num_heads=2,
        intermediate_size=128,
        pretrain_steps=5,
        pretrain_batch=8,
        threads=1,
    )
    build_tiny(root / "data" / "train.jsonl", root / "model", spec)
    return root


def experiment(root: Path, name: str) -> Path:
    exp = {
        "name": name,
        "model": {"path": str(root / "model")},
        "data": {"train": "data/train.jsonl", "validation": "data/validation.jsonl"},
        "sites": [
            {
                "name": "facility",
                "site": "localhost-ssh",
                "user_options": {"max_workers_per_node": 1},
            },
            {"name": "laptop", "site": "local"},
        ],
        "rounds": 1,
        "training": {"local_steps": 2, "batch_size": 4, "max_length": 96, "torch_threads": 1},
        "lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj"]},
        "evaluation": {
            "site": "laptop",
            "max_samples": 8,
            "batch_size": 8,
            "generate_max_new_tokens": 4,
        },
        "task_timeout_s": 300,
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def test_deployed_site_runs_through_the_sdk_executor(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crossfl.functions import kit_functions
    from crossfl.sites import load_site
    from crossfl.state import FunctionState, now

    monkeypatch.setenv("CROSSFL_ROOT", str(project))
    endpoint_id = str(uuid.uuid4())
    functions = {  # as `crossfl deploy` registered them
        kind: FunctionState(
            function_id=str(uuid.uuid4()), name=f.name, digest=f.digest, registered_at=now()
        )
        for kind, f in kit_functions(load_site("localhost-ssh")).items()
    }
    save_state(
        DeployState(
            site="localhost-ssh",
            host="127.0.0.1",
            remote_root="/remote/root",
            functions=functions,
            endpoint=EndpointState(
                name="crossfl-localhost-ssh", configured=True, started=True, endpoint_id=endpoint_id
            ),
        )
    )
    ForwardingExecutor.instances = []
    ForwardingExecutor.engine_root = project / "forwarded"
    monkeypatch.setattr(globus_compute_sdk, "Executor", ForwardingExecutor)

    exp, path = load_experiment(experiment(project, "mixed"))
    run_dir = run_experiment(exp, path, Console(width=120))

    (sdk,) = ForwardingExecutor.instances
    assert sdk.endpoint_id == endpoint_id
    assert sdk.user_endpoint_config == {"max_workers_per_node": 1}
    assert isinstance(sdk.serializer, SiteSerializer) and sdk.serializer.site == "facility"
    assert sdk.result_serializers == JSON_RESULTS and sdk.submitted >= 1
    # every task went by the id deploy registered for its function: nothing new registered
    assert sdk.by_id and set(sdk.by_id) <= {f.function_id for f in functions.values()}
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tasks = {r["site"]: r for r in records if r["kind"] == "task"}
    assert tasks["facility"]["status"] == "ok" and tasks["laptop"]["status"] == "ok"
    images = json.loads((run_dir / "site_images.json").read_text())
    assert set(images) == {"facility", "laptop"} and images["laptop"]["runtime"] == "none"


def test_undeployed_site_is_refused_before_any_engine_starts(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CROSSFL_ROOT", str(project))
    (project / "deploy" / "state" / "localhost-ssh.json").unlink(missing_ok=True)
    exp, path = load_experiment(experiment(project, "undeployed"))
    with pytest.raises(UserError) as info:
        run_experiment(exp, path, Console(width=120))
    assert (
        "localhost-ssh" in info.value.render()
        and "make deploy SITE=localhost-ssh" in info.value.render()
    )
    assert not list((project / "runs").glob("undeployed-*/engines/*"))


def test_a_function_changed_since_deploy_is_refused_before_the_run(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The endpoint's allowed_functions name what deploy registered; a task function that
    differs now (its site file changed) would be refused there: the plan says so first."""
    from crossfl.state import FunctionState, now

    monkeypatch.setenv("CROSSFL_ROOT", str(project))
    stale = FunctionState(
        function_id=str(uuid.uuid4()), name="train_round", digest="0" * 64, registered_at=now()
    )
    save_state(
        DeployState(
            site="localhost-ssh",
            host="127.0.0.1",
            remote_root="/remote/root",
            functions={"train": stale},
            endpoint=EndpointState(
                name="crossfl-localhost-ssh",
                configured=True,
                started=True,
                endpoint_id=str(uuid.uuid4()),
            ),
        )
    )
    exp, path = load_experiment(experiment(project, "stale"))
    with pytest.raises(UserError) as info:
        run_experiment(exp, path, Console(width=120))
    text = info.value.render()
    assert "train function changed since `crossfl deploy`" in text
    assert "crossfl deploy localhost-ssh" in text
    assert not list((project / "runs").glob("stale-*/engines/*"))


def test_run_records_the_image_digest_deploy_staged(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import datetime

    from crossfl.server.plan import image_record
    from crossfl.sites import load_site
    from crossfl.state import ImageState

    monkeypatch.setenv("CROSSFL_ROOT", str(project))
    staged = ImageState(
        arch="cuda",
        local_path="build/images/crossfl-cuda.sif",
        remote_path="/home/u/.crossfl/polaris/images/crossfl-cuda.sif",
        sha256="ab" * 32,
        size=10,
        staged_at=datetime.now(UTC),
    )
    save_state(
        DeployState(
            site="polaris",
            host="polaris",
            remote_root="/home/u/.crossfl/polaris",
            image=staged,
            endpoint=EndpointState(name="crossfl-polaris"),
        )
    )
    record = image_record(load_site("polaris"), runs_here=False)
    assert record == {
        "site": "polaris",
        "runtime": "apptainer",
        "arch": "cuda",
        "image": staged.remote_path,
        "digest": "sha256:" + "ab" * 32,
    }
