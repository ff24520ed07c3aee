"""Request rules: a task group's request (the site's defaults under the user's options: queue,
QOS, walltime, nodes and blocks) against the facility's published limits (the queue, partition
and QOS entries of the site file), and one training task against the site's way of handing
out devices. `check_request` is the one rule engine: render's user-config path, the server's
plan and `crossfl doctor` call it before anything is submitted, and the catalog's own defaults
are held to it when a site loads (crossfl.sites.catalog_rules)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crossfl.errors import UserError
from crossfl.schedulers import parse_walltime

if TYPE_CHECKING:
    from crossfl.sites.schema import Queue, Site


@dataclass(frozen=True)
class Request:
    """What a task group asks of the scheduler: the site's defaults under the user's options."""

    queue: str | None
    qos: str | None
    walltime: str
    nodes: int
    max_blocks: int


@dataclass(frozen=True)
class RequestProblem:
    field: str  # the user option (and site field) it is about
    message: str  # without the site's name
    fix: str


class RequestRefused(UserError):
    """A request the facility's published rules refuse, as one line:
    "polaris: queue debug allows at most 01:00:00; asked 02:00:00 (fix: ...)"."""

    def __init__(self, site: str, problem: RequestProblem) -> None:
        self.site = site
        self.option = problem.field  # the user option it is about (walltime, queue, ...)
        # No `field`: the line names the site and its rule itself, wherever it is reported.
        super().__init__(f"{site}: {problem.message}", fix=problem.fix)


def dimensions(site: Site) -> list[tuple[str, str, dict[str, Queue]]]:
    """(user option, word, entries) for each dimension the site publishes limits for."""
    out: list[tuple[str, str, dict[str, Queue]]] = []
    if site.limits_by == "queue":
        if site.queues:
            out.append(("queue", site.sched.queue_word, site.queues))
        if site.qos_limits:
            out.append(("qos", "qos", site.qos_limits))
    elif site.queues:
        out.append(("qos", "qos", site.queues))
    return out


def request_of(
    site: Site, options: Mapping[str, Any]
) -> tuple[Request | None, RequestProblem | None]:
    """The site's defaults under the user's options, or the first option of the wrong form."""
    walltime = options.get("walltime", site.walltime)
    if not isinstance(walltime, str):
        return None, RequestProblem(
            "walltime", f"walltime {walltime!r} is not HH:MM:SS", "write it like 01:00:00"
        )
    try:
        parse_walltime(walltime)
    except ValueError:
        return None, RequestProblem(
            "walltime", f"walltime {walltime!r} is not HH:MM:SS", "write it like 01:00:00"
        )
    ints = {}
    for key, default in (
        ("nodes_per_block", site.nodes_per_block),
        ("max_blocks", site.max_blocks),
    ):
        value = options.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return None, RequestProblem(
                key,
                f"{key} {value!r} is not a whole number >= 1",
                f"give an integer >= 1 for {key}",
            )
        ints[key] = value
    queue, qos = options.get("queue", site.queue), options.get("qos", site.qos)
    return Request(
        queue if isinstance(queue, str) else None,
        qos if isinstance(qos, str) else None,
        walltime,
        ints["nodes_per_block"],
        ints["max_blocks"],
    ), None


def _fits(entry: Queue, req: Request) -> bool:
    """Whether an entry takes the request's nodes and walltime (for suggesting another)."""
    if req.nodes < entry.min_nodes or (entry.max_nodes and req.nodes > entry.max_nodes):
        return False
    most, _ = entry.walltime_for(req.nodes)
    seconds = parse_walltime(req.walltime)
    if most is not None and seconds > parse_walltime(most):
        return False
    return not (entry.min_walltime and seconds < parse_walltime(entry.min_walltime))


def _others(
    site: Site, table: dict[str, Queue], name: str, req: Request, production: bool
) -> list[str]:
    """The other entries of a table that would take the request."""
    part = site.node_part()
    return sorted(
        n
        for n, e in table.items()
        if n != name
        and not e.by_request
        and _fits(e, req)
        and (e.production or not production)
        and (e.part is None) == (part is None)
    )


def _or_use(word: str, names: list[str]) -> str:
    return f", or use {word} {' or '.join(names)}" if names else ""


def request_problems(site: Site, req: Request, *, production: bool) -> list[RequestProblem]:
    """Every published rule the request breaks, most basic first."""
    out: list[RequestProblem] = []
    picked = {"queue": req.queue, "qos": req.qos}
    for key, word, table in dimensions(site):
        name = picked[key]
        if name is not None and name not in table:
            out.append(
                RequestProblem(
                    key,
                    f"{word} {name} is not one of {', '.join(sorted(table))}",
                    f"pick one of {', '.join(sorted(table))}",
                )
            )
    if out:
        return out
    rendered_part = site.node_part()
    seconds = parse_walltime(req.walltime)
    for key, word, table in dimensions(site):
        name = picked[key]
        if name is None:
            continue
        e = table[name]
        if (e.part is None) != (rendered_part is None):
            if e.part is not None:
                out.append(
                    RequestProblem(
                        key,
                        f"{word} {name} gives a job part of a node "
                        f"({e.part.devices} GPU, {e.part.cpus} CPUs) but this "
                        "endpoint was rendered for whole nodes",
                        f"set {key}: {name} in deploy/sites/overrides/{site.name}.yaml"
                        ", then render and deploy again",
                    )
                )
            else:
                out.append(
                    RequestProblem(
                        key,
                        f"this endpoint was rendered for part of a node, and "
                        f"{word} {name} takes whole nodes",
                        f"set {key}: {name} in deploy/sites/overrides/{site.name}.yaml"
                        ", then render and deploy again",
                    )
                )
            continue
        if production and not e.production:
            alts = _others(site, table, name, req, production)
            out.append(
                RequestProblem(
                    key,
                    f"{word} {name} forbids production work, and a crossfl run is production work",
                    f"use {word} {' or '.join(alts)}" if alts else f"use another {word}",
                )
            )
        if req.nodes < e.min_nodes:
            out.append(
                RequestProblem(
                    "nodes_per_block",
                    f"{word} {name} needs at least {e.min_nodes} nodes; asked {req.nodes}",
                    f"nodes_per_block >= {e.min_nodes}"
                    + _or_use(word, _others(site, table, name, req, production)),
                )
            )
        elif e.max_nodes is not None and req.nodes > e.max_nodes:
            out.append(
                RequestProblem(
                    "nodes_per_block",
                    f"{word} {name} allows at most {e.max_nodes} nodes; asked {req.nodes}",
                    f"nodes_per_block <= {e.max_nodes}"
                    + _or_use(word, _others(site, table, name, req, production)),
                )
            )
        else:
            most, b = e.walltime_for(req.nodes)
            if most is not None and seconds > parse_walltime(most):
                size = f" for {b.min_nodes}-{b.max_nodes} nodes" if b is not None else ""
                out.append(
                    RequestProblem(
                        "walltime",
                        f"{word} {name} allows at most {most}{size}; asked {req.walltime}",
                        f"ask for at most {most}"
                        + _or_use(word, _others(site, table, name, req, production)),
                    )
                )
        if e.min_walltime and seconds < parse_walltime(e.min_walltime):
            out.append(
                RequestProblem(
                    "walltime",
                    f"{word} {name} needs at least {e.min_walltime}; asked {req.walltime}",
                    f"ask for at least {e.min_walltime}",
                )
            )
        if e.jobs_per_user is not None and req.max_blocks > e.jobs_per_user:
            out.append(
                RequestProblem(
                    "max_blocks",
                    f"{word} {name} allows {e.jobs_per_user} job(s) per "
                    f"user in any state; asked max_blocks {req.max_blocks}",
                    f"max_blocks <= {e.jobs_per_user}",
                )
            )
    return out


def task_problems(
    site: Site, req: Request, nodes: int | None, ranks_per_node: int | str | None
) -> list[RequestProblem]:
    """What the site's way of handing out devices (`endpoint.tasks`) and its nodes allow one
    training task: several nodes only through the MPI engine and within the pilot job, at most
    one rank per device a node holds, one device per task where workers are pinned to one."""
    out: list[RequestProblem] = []
    mode = site.endpoint.tasks
    overrides = f"deploy/sites/overrides/{site.name}.yaml, then render and deploy again"
    if nodes is not None and nodes > 1:
        if mode != "mpi":
            out.append(
                RequestProblem(
                    "nodes",
                    f"a task on {nodes} nodes runs through the MPI engine, "
                    f"and this site's tasks are {mode}",
                    f"set endpoint.tasks: mpi in {overrides}",
                )
            )
        elif nodes > req.nodes:
            out.append(
                RequestProblem(
                    "nodes",
                    f"a task on {nodes} nodes needs a pilot job of as many; "
                    f"nodes_per_block is {req.nodes}",
                    f"set user_options.nodes_per_block: {nodes}",
                )
            )
    if not isinstance(ranks_per_node, int):
        return out
    devices = site.devices_per_node()
    if mode == "per-device" and ranks_per_node > 1:
        out.append(
            RequestProblem(
                "ranks_per_node",
                f"{ranks_per_node} ranks per node, but this "
                "site's workers hold one device each (tasks: per-device)",
                f"ranks_per_node: 1, or set endpoint.tasks: per-node or mpi in {overrides}",
            )
        )
    elif devices and ranks_per_node > devices:
        out.append(
            RequestProblem(
                "ranks_per_node",
                f"{ranks_per_node} ranks per node, but a node "
                f"holds {devices} {site.accelerator.vendor} devices (one rank each)",
                f"ranks_per_node <= {devices}",
            )
        )
    elif not devices and site.cpus_per_node and ranks_per_node > site.cpus_per_node:
        out.append(
            RequestProblem(
                "ranks_per_node",
                f"{ranks_per_node} CPU ranks per node, but a node has {site.cpus_per_node} CPUs",
                f"ranks_per_node <= {site.cpus_per_node}",
            )
        )
    return out


def check_request(
    site: Site,
    user_options: Mapping[str, Any],
    *,
    production: bool = True,
    nodes: int | None = None,
    ranks_per_node: int | str | None = None,
) -> None:
    """Refuse, with one line naming the site, the rule and the fix, a task group's options
    that the facility's published rules make impossible: an unknown queue/QOS, too few or too
    many nodes, a walltime over the limit for that many nodes (job-size bins), more pilot jobs
    than a queue takes per user, production work on a debug QOS, part of a node on a
    whole-node endpoint; and, given the experiment's `nodes` and `ranks_per_node` for one
    task, what `task_problems` refuses. Called before anything is submitted: by render's
    user-config path and by the server's plan. Unknown options are the endpoint schema's to
    refuse."""
    req, bad = request_of(site, user_options)
    if bad is None:
        assert req is not None
        problems = request_problems(site, req, production=production)
        problems += task_problems(site, req, nodes, ranks_per_node)
        bad = problems[0] if problems else None
    if bad is not None:
        raise RequestRefused(site.name, bad)
