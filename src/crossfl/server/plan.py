"""An experiment resolved once, and checked before anything starts.

``plan_run`` reads every site entry's catalog file once, renders the sites that run on this
machine (their user endpoint config, the user options checked against the site's schema,
loaded by the endpoint's own loader), finds each facility's endpoint, makes every path a site
will be handed absolute, and checks what the server can check here: the strategy, its
arguments and the driver, the local model and data paths, the evaluation data. A run that fails
these checks raises ``UserError`` and leaves nothing behind: no run directory, no engine.
The plan is then handed down: to the executors, to the drivers (which build every site task
from it) and to the transport.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from crossfl.client.contract import EvalTask, LoraSpec, TrainTask
from crossfl.clock import REAL_CLOCK
from crossfl.errors import UserError
from crossfl.extras import require
from crossfl.server.dispatch import make_policy, pilot_walltime_s
from crossfl.server.experiment import Experiment, SiteEntry, local_path
from crossfl.server.strategies import get_strategy, is_async
from crossfl.server.strategies.base import ClientPlan
from crossfl.sites import Site

DriverKind = Literal["sync", "async"]


@dataclass(frozen=True)
class SitePlan:
    """One site entry of the experiment, resolved."""

    name: str
    catalog: Site
    runs_here: bool  # no login host to deploy to (local, local-slurm): an engine on this machine
    model_path: str  # absolute, on the site's filesystem
    data_path: str | None  # the site's own data (absolute); None: a partition of data.train
    shared_dir: str | None  # where adapters travel by reference on a shared filesystem (absolute)
    nodes: int  # nodes one training task runs on (more than 1: tasks: mpi)
    user_options: dict[str, Any]  # the entry's options for the site's endpoint template
    engine_config: Any = None  # sites that run here: the loaded user endpoint config
    engine_source: str = ""  # ... and the template it came from
    endpoint_id: str | None = None  # facilities: the endpoint `crossfl deploy` registered
    image: dict[str, str | None] | None = None  # the image and digest the site runs
    held_nodes: int = 1  # nodes the site's pilot job holds while a task runs: what is charged
    ranks_per_node: int | Literal["auto"] = 1  # training ranks per node ("auto": all devices)

    @property
    def kind(self) -> str:
        return "local engine" if self.runs_here else "globus compute"

    @property
    def tasks(self) -> str:
        """How the site hands its devices to a task (crossfl.sites.Endpoint.tasks)."""
        return self.catalog.endpoint.tasks

    @property
    def mpi(self) -> bool:
        return self.tasks == "mpi"

    def devices_held(self, ranks: int) -> int:
        """Devices the site's pilot job holds while a task of ``ranks`` ranks runs: its nodes'
        devices; a site without accelerators, the task's ranks (its CPU "devices")."""
        per_node = self.catalog.devices_per_node()
        return per_node * self.held_nodes if per_node else ranks


@dataclass(frozen=True)
class RunPlan:
    experiment: Experiment
    source: Path  # the experiment file (or the run's experiment.yaml when resumed)
    sites: dict[str, SitePlan]
    driver: DriverKind
    validation_path: str  # absolute, at the evaluating site
    train_path: Path | None  # absolute, here: what the server partitions for sites without data
    # the base model's directory on this machine: the adapter's layout comes from its config
    # (None only for a plan built without the checks: then the first update fixes it)
    model_here: str | None = None

    @property
    def eval_site(self) -> SitePlan:
        return self.sites[self.experiment.eval_site]

    @property
    def lora(self) -> LoraSpec:
        return self.experiment.lora

    def client_plan(self, name: str) -> ClientPlan:
        """The experiment's local steps and learning rate for site ``name``."""
        t, o = self.experiment.training, self.experiment.site_entry(name).training
        return ClientPlan(local_steps=o.local_steps or t.local_steps, lr=o.lr or t.lr)

    def train_task(self, name: str, data_path: str, plan: ClientPlan, rnd: int) -> TrainTask:
        """Site ``name``'s training task for round (async: task number) ``rnd``, no adapter yet."""
        e = self.experiment
        t, o = e.training, e.site_entry(name).training
        return TrainTask(
            model_path=self.sites[name].model_path,
            data_path=data_path,
            local_steps=plan.local_steps,
            batch_size=o.batch_size or t.batch_size,
            lr=plan.lr,
            max_length=t.max_length,
            lora=self.lora,
            dtype=e.model.dtype,
            adapter_dtype=t.adapter_dtype,
            seed=e.seed,
            round=rnd,
            torch_threads=t.torch_threads,
            max_samples=o.max_samples or t.max_samples,
            expect_device=self.sites[name].catalog.expect_device,
            shard=o.shard or t.shard,
            # per-node: the worker starts the ranks; mpi: the launcher does (its own count)
            ranks_per_node=self.sites[name].ranks_per_node
            if self.sites[name].tasks == "per-node"
            else 1,
        )

    def eval_task(self) -> EvalTask:
        """The evaluating site's task, no adapter yet."""
        e = self.experiment
        v = e.evaluation
        return EvalTask(
            model_path=self.eval_site.model_path,
            data_path=self.validation_path,
            lora=self.lora,
            batch_size=v.batch_size,
            max_length=e.training.max_length,
            dtype=e.model.dtype,
            max_samples=v.max_samples,
            generate_max_new_tokens=v.generate_max_new_tokens,
            generate_samples=v.generate_samples,
            torch_threads=e.training.torch_threads,
            expect_device=self.eval_site.catalog.expect_device,
        )


# ---------------------------------------------------------------------------- checks


def site_path(value: str, runs_here: bool, field: str) -> str:
    """A path as a site reads it: this machine's are made absolute from the project root; a
    facility's must be absolute already (its workers would resolve a relative one elsewhere)."""
    if runs_here:
        return str(local_path(value))
    if not os.path.isabs(value):
        raise UserError(
            f"{value!r} is relative, but this site is a facility",
            field=field,
            fix="give the absolute path on the facility's filesystem",
        )
    return value


def driver_kind(experiment: Experiment) -> DriverKind:
    """The driver the experiment asks for; `auto` follows the strategy's is_async."""
    name = experiment.strategy.name.strip()
    asynchronous = is_async(name)  # appfl:<Name> included
    if experiment.driver == "sync" and asynchronous:
        raise UserError(
            f"strategy {name} is asynchronous (one update per aggregation)",
            field="driver",
            fix="use driver: async or auto, or a synchronous strategy",
        )
    if experiment.driver == "async" or (experiment.driver == "auto" and asynchronous):
        return "async"
    if experiment.max_updates is not None:
        raise UserError(
            f"max_updates ends asynchronous runs; strategy {name} runs synchronous rounds",
            field="max_updates",
            fix="set rounds instead, or driver: async",
        )
    return "sync"


def _require(path: str, what: str, field: str, fix: str) -> None:
    if not Path(path).exists():
        raise UserError(f"no {what} at {path}", field=field, fix=fix)


def image_record(site: Site, runs_here: bool) -> dict[str, str | None]:
    """Which image a site runs and its digest: for a facility what deploy staged (deploy/state/),
    for a site here the image file itself."""
    from crossfl.images import image_digest
    from crossfl.sites import image_arch
    from crossfl.state import load_state

    record: dict[str, str | None] = {
        "site": site.name,
        "runtime": site.container.runtime,
        "arch": image_arch(site),
        "image": None,
        "digest": None,
    }
    if site.container.runtime == "none":
        return record
    state = load_state(site.name) if not runs_here else None
    if state is not None and state.image is not None:
        # podman-hpc: the image ID (what its tasks run) and, apart, its manifest digest
        record.update(image=state.image.remote_path, digest=f"sha256:{state.image.sha256}")
        if state.image.digest:
            record["manifest_digest"] = state.image.digest
    else:
        record["image"] = site.image()
        if record["image"] and Path(record["image"]).is_file():
            record["digest"] = image_digest(record["image"])
    return record


def task_shape(site: Site, entry: SiteEntry) -> tuple[int, int | Literal["auto"], dict[str, Any]]:
    """A site entry's nodes and ranks per node for one training task, and its user options
    with an MPI task's nodes as the pilot's nodes_per_block where the entry gives none.
    Defaults: one node; every device of it (per-node: "auto", what the worker sees); a site
    without accelerators 1 rank; one device per worker where workers are pinned."""
    options = dict(entry.user_options)
    mode = site.endpoint.tasks
    nodes = entry.nodes or 1
    if mode == "mpi":
        nodes = entry.nodes or options.get("nodes_per_block") or site.nodes_per_block
        if site.sched.batch and "nodes_per_block" not in options:
            options["nodes_per_block"] = nodes
    ranks: int | Literal["auto"]
    if entry.ranks_per_node is not None:
        ranks = entry.ranks_per_node
    elif mode == "per-device" or not site.devices_per_node():
        ranks = 1
    else:
        ranks = site.ranks_per_node() if mode == "mpi" else "auto"
    if mode == "mpi" and ranks == "auto":
        ranks = site.ranks_per_node()
    return nodes, ranks, options


def check_by_reference(experiment: Experiment, entry: SiteEntry, here: bool) -> None:
    """An MPI site's task and result files travel by reference: a shared directory (a site
    that runs here has one) or Globus Transfer."""
    mode = experiment.transport_mode(entry)
    shared = here or entry.transport.shared_dir
    globus = entry.transport.globus is not None and experiment.transport.globus is not None
    if mode == "inline" or (mode == "shared_fs" and not shared) or not (shared or globus):
        raise UserError(
            f"site {entry.name} runs MPI tasks, whose task and result files "
            "travel by reference, and it has no way to send them",
            field=f"sites[{entry.name}].transport",
            fix="set transport.shared_dir (a directory on the facility the server "
            "reads too), or transport.globus here and at the top level",
        )


def plan_site(experiment: Experiment, name: str) -> SitePlan:
    from crossfl.endpoints import load_engine_config
    from crossfl.functions import registered_functions
    from crossfl.render import render_site, render_user_config
    from crossfl.sites import check_request, load_site, with_deployed_image
    from crossfl.state import require_endpoint_id

    entry = experiment.site_entry(name)
    site = load_site(entry.site)
    here = site.deploy.host is None
    # a facility that was never deployed says so before anything about the entry's settings
    endpoint_id = None if here else require_endpoint_id(entry.site)
    nodes, ranks, options = task_shape(site, entry)
    # the dispatch policy's idle settings (a warm pilot) where the site has pilot jobs
    warm = make_policy(experiment, REAL_CLOCK).endpoint_options(
        name, pilot_walltime_s(site, options)
    )
    options = {**warm, **options}
    # the task's shape against the site's rules, before anything else is looked up
    check_request(site, options, nodes=nodes, ranks_per_node=ranks)
    if not here:  # podman-hpc: tasks name the image deploy placed by its ID, not a tag
        site = with_deployed_image(site)
    if site.endpoint.tasks == "mpi":
        check_by_reference(experiment, entry, here)
    if not here:
        registered_functions(site)  # the deploy's function ids still name these functions
    own_model = f"sites[{name}].model_path"
    model_field = own_model if entry.model_path else "model.path"
    model = site_path(entry.model_path or experiment.model.path, here, model_field)
    data = site_path(entry.data_path, here, f"sites[{name}].data_path") if entry.data_path else None
    shared = entry.transport.shared_dir
    shared = site_path(shared, here, f"sites[{name}].transport.shared_dir") if shared else None
    if here:
        require("train", f"site {name} trains on this machine and")
        if not (Path(model) / "config.json").is_file():
            raise UserError(
                f"no model at {entry.model_path or experiment.model.path} (config.json missing)",
                field=model_field,
                fix=f"build the demo model with `make model`, or point "
                f"{model_field} at a checkpoint directory",
            )
        if data is not None:
            _require(
                data,
                "site data",
                f"sites[{name}].data_path",
                "build the demo data with `make data`, or correct the path",
            )
    # the user options are checked against the site's schema for facilities too
    site_dir = render_site(site)
    # ... and against its published limits (crossfl.sites.check_request), before any task
    text = render_user_config(site_dir, options, site=site)
    source = str(site_dir / "endpoint" / "user_config_template.yaml.j2")
    config = load_engine_config(text, source=source) if here else None
    held = int(options.get("nodes_per_block", site.nodes_per_block)) if site.sched.batch else 1
    return SitePlan(
        name=name,
        catalog=site,
        runs_here=here,
        model_path=model,
        data_path=data,
        shared_dir=shared,
        nodes=nodes,
        user_options=options,
        engine_config=config,
        engine_source=source,
        endpoint_id=endpoint_id,
        image=image_record(site, here),
        held_nodes=held,
        ranks_per_node=ranks,
    )


def plan_run(experiment: Experiment, source: Path, kept_data: Path | None = None) -> RunPlan:
    """Resolve and check ``experiment`` (read from ``source``); UserError at the first problem
    (naming ``source`` when the problem is one of its fields). ``kept_data``: a resumed run's
    data/ directory, whose partitions stand in for data.train."""
    try:
        return _plan(experiment, source, kept_data)
    except UserError as exc:
        if exc.file is None and exc.field:
            raise UserError(exc.message, file=source, field=exc.field, fix=exc.fix) from None
        raise


def _plan(experiment: Experiment, source: Path, kept_data: Path | None) -> RunPlan:
    driver = driver_kind(experiment)
    get_strategy(experiment.strategy.name, **experiment.strategy.kwargs)  # its arguments, checked
    sites = {s.name: plan_site(experiment, s.name) for s in experiment.sites}
    evaluator = sites[experiment.eval_site]
    validation = site_path(experiment.data.validation, evaluator.runs_here, "data.validation")
    if evaluator.runs_here:
        _require(
            validation,
            "validation data",
            "data.validation",
            "build the demo data with `make data`, or correct the path",
        )
    train = None
    kept = {p.stem for p in kept_data.glob("*.jsonl")} if kept_data is not None else set()
    if any(s.data_path is None and name not in kept for name, s in sites.items()):
        assert experiment.data.train is not None  # enforced by the schema
        train = local_path(experiment.data.train)
        _require(
            str(train),
            "training data",
            "data.train",
            "build the demo data with `make data`, or correct the path",
        )
    return RunPlan(
        experiment=experiment,
        source=source,
        sites=sites,
        driver=driver,
        validation_path=validation,
        train_path=train,
        model_here=model_here(experiment, sites),
    )


def model_here(experiment: Experiment, sites: dict[str, SitePlan]) -> str:
    """A directory on this machine with the model's config.json: model.path, else the model of
    a site that runs here. The server derives the adapter's layout from it, so that no site's
    update decides what the others must match."""
    candidates = [str(local_path(experiment.model.path))]
    candidates += [s.model_path for s in sites.values() if s.runs_here]
    for path in candidates:
        if (Path(path) / "config.json").is_file():
            return path
    raise UserError(
        f"no config.json at {experiment.model.path} on this machine: the server derives the "
        "LoRA adapter's layout from the model's config",
        field="model.path",
        fix="point model.path at a directory here holding the model's config.json (each "
        "site's model_path still names its own copy)",
    )
