"""The catalog's rules that span several fields: what the site's scheduler allows (asked of
`crossfl.schedulers`), the facility's account rule, the published queue/partition/QOS limits,
the node diagram against the workers' CPU affinity, an image for the site's architecture; the
same limits applied to a request (`check_request`: the options of a task group, before anything
is submitted) and to a rendered job script (`lint_script`), and written as JSON-schema rules for
the endpoint (`request_schema_rules`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crossfl import schedulers
from crossfl.errors import UserError
from crossfl.schedulers import parse_walltime
from crossfl.schedulers.base import walltime_at_most_pattern
from crossfl.schema import FieldError

if TYPE_CHECKING:
    from crossfl.sites.schema import Queue, Site


def check(site: Site) -> None:
    """Raise FieldError (reported under its field) for the first rule the site breaks."""
    _check_scheduler(site)
    _check_account(site)
    _check_limits(site)
    _check_sources(site)
    _check_tasks(site)
    _check_affinity(site)
    _check_container(site)


def _check_scheduler(site: Site) -> None:
    site.sched.check_site(site)
    from crossfl.schedulers.launchers import LAUNCHERS

    LAUNCHERS[site.launcher.type].check_site(site)
    if site.allowed_filesystems is not None:
        bad = [f for f in site.filesystems if f not in site.allowed_filesystems]
        if bad:
            raise FieldError(
                "filesystems",
                f"{bad} not offered at this facility: choose from {site.allowed_filesystems}",
            )
    for i, d in enumerate(site.directives):
        problem = site.sched.directive_problem(d)
        if problem:
            raise FieldError(f"directives[{i}]", problem)


MPI_LAUNCHERS = ("srun", "mpiexec")  # what Parsl's MPI mode launches with (and aprun)


def _check_tasks(site: Site) -> None:
    """`endpoint.tasks`: what each way of handing out a node's devices needs."""
    mode = site.endpoint.tasks
    if mode == "mpi":
        if not site.sched.batch:
            raise FieldError(
                "endpoint.tasks",
                f"the MPI engine takes its nodes from a pilot "
                f"job, and {site.sched.title} runs none: use tasks per-node",
            )
        if site.launcher.type not in MPI_LAUNCHERS:
            raise FieldError(
                "launcher.type",
                f"tasks: mpi starts ranks with the site's "
                f"launcher, and {site.launcher.type!r} is none: use "
                f"{' or '.join(MPI_LAUNCHERS)}",
            )
    if mode != "per-device":
        if (site.endpoint.max_workers_per_node or 1) != 1:
            raise FieldError(
                "endpoint.max_workers_per_node",
                f"tasks: {mode} runs one worker "
                "per node (or per pilot job), which starts the ranks: remove "
                "max_workers_per_node",
            )
        if site.endpoint.cpu_affinity not in ("none",) and site.endpoint.affinity_lists() is None:
            raise FieldError(
                "endpoint.cpu_affinity",
                f"{site.endpoint.cpu_affinity!r} places "
                "per-device workers; with tasks: " + mode + " give one CPU list "
                "per device (list:...) or none",
            )


def _check_account(site: Site) -> None:
    if not site.account_pattern:
        return
    try:
        rule = re.compile(site.account_pattern)
    except re.error as exc:
        raise FieldError(
            "account_pattern", f"not a regular expression ({exc}): fix the pattern"
        ) from None
    if site.account and not rule.search(site.account):
        raise FieldError(
            "account",
            f"account {site.account!r} does not match this "
            f"facility's rule {site.account_pattern!r}: use the account "
            "of the right allocation",
        )


def cpu_list(text: str) -> list[int]:
    """ "1-7,9,12-13" -> [1, ..., 7, 9, 12, 13] (the cpu-list syntax of Linux, Parsl's
    `list:` affinity and PALS `--cpu-bind list:`); ValueError on anything else."""
    out: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"{text!r} is not a CPU list: write it like 1-7,9-15")
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a:
            raise ValueError(f"{part!r} runs backwards in CPU list {text!r}")
        out.extend(range(a, b + 1))
    return out


# --- requests: a queue/QOS, walltime, nodes and blocks, against the published limits ----------


@dataclass(frozen=True)
class Request:
    """What a task group asks of the scheduler: the site's defaults under the user's options."""

    queue: str | None
    qos: str | None
    walltime: str
    nodes: int
    max_blocks: int


@dataclass(frozen=True)
class Problem:
    field: str  # the user option (and site field) it is about
    message: str  # without the site's name
    fix: str


class RequestRefused(UserError):
    """A request the facility's published rules refuse, as one line:
    "polaris: queue debug allows at most 01:00:00; asked 02:00:00 (fix: ...)"."""

    def __init__(self, site: str, problem: Problem) -> None:
        self.site = site
        self.option = problem.field  # the user option it is about (walltime, queue, ...)
        # No `field`: the line names the site and its rule itself, wherever it is reported.
        super().__init__(f"{site}: {problem.message}", fix=problem.fix)


def entries(site: Site, queue: str | None, qos: str | None) -> list[tuple[str, str, Queue]]:
    """(word, name, entry) for each published entry a job with this queue and QOS meets."""
    out: list[tuple[str, str, Queue]] = []
    if site.limits_by == "queue":
        if queue is not None and queue in site.queues:
            out.append((site.sched.queue_word, queue, site.queues[queue]))
        if qos is not None and qos in site.qos_limits:
            out.append(("qos", qos, site.qos_limits[qos]))
    elif qos is not None and qos in site.queues:
        out.append(("qos", qos, site.queues[qos]))
    return out


def _dimensions(site: Site) -> list[tuple[str, str, dict[str, Queue]]]:
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


def request_of(site: Site, options: Mapping[str, Any]) -> tuple[Request | None, Problem | None]:
    """The site's defaults under the user's options, or the first option of the wrong form."""
    walltime = options.get("walltime", site.walltime)
    if not isinstance(walltime, str):
        return None, Problem(
            "walltime", f"walltime {walltime!r} is not HH:MM:SS", "write it like 01:00:00"
        )
    try:
        parse_walltime(walltime)
    except ValueError:
        return None, Problem(
            "walltime", f"walltime {walltime!r} is not HH:MM:SS", "write it like 01:00:00"
        )
    ints = {}
    for key, default in (
        ("nodes_per_block", site.nodes_per_block),
        ("max_blocks", site.max_blocks),
    ):
        value = options.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return None, Problem(
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


def request_problems(site: Site, req: Request, *, production: bool) -> list[Problem]:
    """Every published rule the request breaks, most basic first."""
    out: list[Problem] = []
    picked = {"queue": req.queue, "qos": req.qos}
    for key, word, table in _dimensions(site):
        name = picked[key]
        if name is not None and name not in table:
            out.append(
                Problem(
                    key,
                    f"{word} {name} is not one of {', '.join(sorted(table))}",
                    f"pick one of {', '.join(sorted(table))}",
                )
            )
    if out:
        return out
    rendered_part = site.node_part()
    seconds = parse_walltime(req.walltime)
    for key, word, table in _dimensions(site):
        name = picked[key]
        if name is None:
            continue
        e = table[name]
        if (e.part is None) != (rendered_part is None):
            if e.part is not None:
                out.append(
                    Problem(
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
                    Problem(
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
                Problem(
                    key,
                    f"{word} {name} forbids production work, and a crossfl run is production work",
                    f"use {word} {' or '.join(alts)}" if alts else f"use another {word}",
                )
            )
        if req.nodes < e.min_nodes:
            out.append(
                Problem(
                    "nodes_per_block",
                    f"{word} {name} needs at least {e.min_nodes} nodes; asked {req.nodes}",
                    f"nodes_per_block >= {e.min_nodes}"
                    + _or_use(word, _others(site, table, name, req, production)),
                )
            )
        elif e.max_nodes is not None and req.nodes > e.max_nodes:
            out.append(
                Problem(
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
                    Problem(
                        "walltime",
                        f"{word} {name} allows at most {most}{size}; asked {req.walltime}",
                        f"ask for at most {most}"
                        + _or_use(word, _others(site, table, name, req, production)),
                    )
                )
        if e.min_walltime and seconds < parse_walltime(e.min_walltime):
            out.append(
                Problem(
                    "walltime",
                    f"{word} {name} needs at least {e.min_walltime}; asked {req.walltime}",
                    f"ask for at least {e.min_walltime}",
                )
            )
        if e.jobs_per_user is not None and req.max_blocks > e.jobs_per_user:
            out.append(
                Problem(
                    "max_blocks",
                    f"{word} {name} allows {e.jobs_per_user} job(s) per "
                    f"user in any state; asked max_blocks {req.max_blocks}",
                    f"max_blocks <= {e.jobs_per_user}",
                )
            )
    return out


def task_problems(
    site: Site, req: Request, nodes: int | None, ranks_per_node: int | str | None
) -> list[Problem]:
    """What the site's way of handing out devices (`endpoint.tasks`) and its nodes allow one
    training task: several nodes only through the MPI engine and within the pilot job, at most
    one rank per device a node holds, one device per task where workers are pinned to one."""
    out: list[Problem] = []
    mode = site.endpoint.tasks
    overrides = f"deploy/sites/overrides/{site.name}.yaml, then render and deploy again"
    if nodes is not None and nodes > 1:
        if mode != "mpi":
            out.append(
                Problem(
                    "nodes",
                    f"a task on {nodes} nodes runs through the MPI engine, "
                    f"and this site's tasks are {mode}",
                    f"set endpoint.tasks: mpi in {overrides}",
                )
            )
        elif nodes > req.nodes:
            out.append(
                Problem(
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
            Problem(
                "ranks_per_node",
                f"{ranks_per_node} ranks per node, but this "
                "site's workers hold one device each (tasks: per-device)",
                f"ranks_per_node: 1, or set endpoint.tasks: per-node or mpi in {overrides}",
            )
        )
    elif devices and ranks_per_node > devices:
        out.append(
            Problem(
                "ranks_per_node",
                f"{ranks_per_node} ranks per node, but a node "
                f"holds {devices} {site.accelerator.vendor} devices (one rank each)",
                f"ranks_per_node <= {devices}",
            )
        )
    elif not devices and site.cpus_per_node and ranks_per_node > site.cpus_per_node:
        out.append(
            Problem(
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


def _check_limits(site: Site) -> None:
    if site.qos_limits and site.limits_by != "queue":
        raise FieldError(
            "qos_limits", "with limits_by: qos the QOS entries are `queues`: move them there"
        )
    if site.qos_limits and not site.sched.has_qos:
        raise FieldError("qos_limits", f"{site.sched.title} has no QOS: remove qos_limits")
    for _, _, table in _dimensions(site):
        if any(e.part is not None for e in table.values()) and not site.sched.shares_nodes:
            raise FieldError("queues", f"{site.sched.title} jobs here get whole nodes: remove part")
    req, bad = request_of(site, {})
    problems = [bad] if bad else request_problems(site, req, production=False)  # type: ignore
    if problems:
        p = problems[0]
        # "message: fix" is split at its last ": " (crossfl.schema.problems)
        raise FieldError(p.field, f"{p.message}: {p.fix.replace(': ', ' ')}")


def _check_sources(site: Site) -> None:
    """A facility's published facts (a site that lists its facility's `docs`) cite where they
    were read."""
    if not site.docs:
        return
    for _, _, table in _dimensions(site):
        field = "queues" if table is site.queues else "qos_limits"
        for name, e in table.items():
            if e.source is None:
                raise FieldError(
                    f"{field}.{name}.source",
                    "a facility's limits cite where "
                    "they are published: add source: {url: <page>, checked: "
                    "<YYYY-MM-DD>}",
                )
    if site.node is not None and site.node.source is None:
        raise FieldError(
            "node.source",
            "the node diagram cites where it is published: add "
            "source: {url: <page>, checked: <YYYY-MM-DD>}",
        )


def _check_affinity(site: Site) -> None:
    """Parsl's `list:` affinity names one CPU set per worker; with a node diagram, each
    worker's CPUs are ones a job may use and, with a device, the ones nearest its device."""
    lists = site.endpoint.affinity_lists()
    field = "endpoint.cpu_affinity"
    if lists is None:
        return
    if site.endpoint.tasks == "per-device":
        want, what = (
            site.workers_per_node(),
            "workers: give one list per worker (Parsl refuses any other count)",
        )
    else:
        want, what = (
            site.ranks_per_node(),
            "devices: give one list per device (rank i takes list i)",
        )
    if site.node_part() is None and len(lists) != want:
        raise FieldError(field, f"{len(lists)} CPU lists for {want} {what}")
    node = site.node
    if node is None:
        return
    allowed = node.cpu_set()
    ids = site.accelerator.device_ids
    for i, cpus in enumerate(lists):
        outside = sorted(set(cpus) - allowed)
        if outside:
            raise FieldError(
                field,
                f"worker {i} is given CPUs {outside} that jobs may not "
                f"use (node.cpus is {node.cpus}): leave them out",
            )
        if i < len(ids) and ids[i] in node.nearest_cpus:
            near = set(cpu_list(node.nearest_cpus[ids[i]]))
            if not set(cpus) <= near:
                raise FieldError(
                    field,
                    f"worker {i} has device {ids[i]} but CPUs "
                    f"{sorted(set(cpus) - near)} are not nearest it "
                    f"({node.nearest_cpus[ids[i]]}): use the device's own CPUs",
                )


_BRACES = re.compile(r"[{}]")
_PLAIN = re.compile(r"^[^\s'\"\\{}]*$")


def _check_container(site: Site) -> None:
    runtime = site.container.runtime
    if runtime == "none":
        return
    arch = site.arch
    if arch not in site.container.images:
        example = (
            f"crossfl-{arch}:TAG"
            if runtime == "podman-hpc"
            else f"{{{{remote_root}}}}/images/crossfl-{arch}.sif"
        )
        raise FieldError(
            f"container.images.{arch}",
            f"no image for this site's architecture {arch!r} "
            f"(accelerator.vendor {site.accelerator.vendor!r}): add "
            f'container.images.{arch}, e.g. "{example}"',
        )
    image = site.image() or ""
    if runtime == "podman-hpc" and (image.endswith(".sif") or image.startswith(("/", "$", "~"))):
        raise FieldError(
            f"container.images.{arch}",
            f"podman-hpc runs an image by name, not "
            f"the file {image!r}: give its name, e.g. crossfl-{arch}:TAG",
        )
    # Parsl formats the container launch command twice (str.format): a brace breaks it.
    words = [
        image,
        *site.container.options,
        *site.container.binds,
        *site.container.env.values(),
        *site.accelerator.env.values(),
    ]
    if runtime == "podman-hpc":  # the host's environment reaches the container only by -e
        words += [*site.env.values(), *site.proxy.env().values()]
    for w in words:
        if _BRACES.search(site.fill(w)):
            raise FieldError(
                "container",
                f"{w!r} has a brace, which breaks the launch "
                "command (Parsl formats it twice): remove it (a variable of the "
                "node's shell is written $VAR)",
            )
    if runtime == "podman-hpc":
        for k, v in {**site.env, **site.container.env, **site.accelerator.env}.items():
            if not _PLAIN.match(v):
                raise FieldError(
                    "env",
                    f"{k}={v!r} cannot pass as `podman-hpc run -e` (the "
                    "engine splits the command on spaces): use a value without "
                    "spaces or quotes",
                )


# --- the same limits, as JSON-schema rules the endpoint checks itself ------------------------


def _is(key: str, value: str, default: str | None) -> dict[str, Any]:
    present = {"required": [key], "properties": {key: {"const": value}}}
    return {"anyOf": [present, {"not": {"required": [key]}}]} if value == default else present


def _nodes_in(lo: int, hi: int | None, default: int) -> dict[str, Any]:
    rng: dict[str, Any] = {"minimum": lo}
    if hi is not None:
        rng["maximum"] = hi
    present = {"required": ["nodes_per_block"], "properties": {"nodes_per_block": rng}}
    inside = lo <= default and (hi is None or default <= hi)
    return {"anyOf": [present, {"not": {"required": ["nodes_per_block"]}}]} if inside else present


def _walltime_then(most: str | None, least: str | None, default: str) -> dict[str, Any] | None:
    wt: dict[str, Any] = {}
    ok = True
    if most is not None:
        wt["pattern"] = walltime_at_most_pattern(parse_walltime(most))
        ok = parse_walltime(default) <= parse_walltime(most)
    if least is not None and parse_walltime(least) > 0:
        wt["not"] = {"pattern": walltime_at_most_pattern(parse_walltime(least) - 1)}
        ok = ok and parse_walltime(default) >= parse_walltime(least)
    if not wt:
        return None
    then: dict[str, Any] = {"properties": {"walltime": wt}}
    if not ok:
        then["required"] = ["walltime"]
    return then


def request_schema_rules(site: Site, options: set[str]) -> list[dict[str, Any]]:
    """The limits JSON Schema can say, as if/then rules over the endpoint's user options:
    per queue/QOS the node range, the walltime per node-count bin (a pattern: schema cannot
    compare times) and the pilot jobs per user. The site's defaults stand for absent options.
    `check_request` says the same in one line before anything reaches the endpoint."""
    rules: list[dict[str, Any]] = []
    defaults = {"queue": site.queue, "qos": site.qos}
    for key, _, table in _dimensions(site):
        if key not in options:
            continue
        for name, e in table.items():
            when = _is(key, name, defaults[key])
            nodes: dict[str, Any] = {"minimum": e.min_nodes}
            if e.max_nodes is not None:
                nodes["maximum"] = e.max_nodes
            then: dict[str, Any] = {"properties": {"nodes_per_block": nodes}}
            if not (
                e.min_nodes <= site.nodes_per_block
                and (e.max_nodes is None or site.nodes_per_block <= e.max_nodes)
            ):
                then["required"] = ["nodes_per_block"]
            if e.jobs_per_user is not None:
                then["properties"]["max_blocks"] = {"maximum": e.jobs_per_user}
                if site.max_blocks > e.jobs_per_user:
                    then.setdefault("required", []).append("max_blocks")
            rules.append({"if": when, "then": then})
            spans = [(b.min_nodes, b.max_nodes, b.max_walltime) for b in e.bins] or [
                (e.min_nodes, e.max_nodes, e.max_walltime)
            ]
            for lo, hi, most in spans:
                wt = _walltime_then(most, e.min_walltime, site.walltime)
                if wt is None:
                    continue
                cond = (
                    when
                    if not e.bins
                    else {"allOf": [when, _nodes_in(lo, hi, site.nodes_per_block)]}
                )
                rules.append({"if": cond, "then": wt})
    return rules


def lint_script(site: Site, text: str) -> list[str]:
    """Problems with the scheduler directives of a rendered job script, by the site's rules:
    options the scheduler knows, PBS filesystems the facility offers, the walltime format
    and the queue's limit, no other scheduler's directives. Empty when the script is clean."""
    prefix = site.sched.directive_prefix
    if prefix is None:
        return []
    others = [p for p in schedulers.prefixes() if p != prefix]
    # a script that names its own queue (an image build in Aurora's capacity) is held to that
    # queue's limits, not the site's default queue's
    flag = site.sched.named_flags.get("queue")
    named = [
        line[len(prefix) :].split()[1]
        for line in text.splitlines()
        if flag and line.startswith(f"{prefix} {flag} ") and len(line[len(prefix) :].split()) > 1
    ]
    if named and site.limits_by == "queue" and named[-1] in site.queues:
        site = site.model_copy(update={"queue": named[-1]})
    problems: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        other = next((p for p in others if line.startswith(p + " ")), None)
        if other is not None:
            problems.append(f"line {n}: {other} directive in a {site.scheduler} script")
            continue
        if line.startswith(prefix + " "):
            directive = line[len(prefix) :].strip()
            problems += [f"line {n}: {p}" for p in site.sched.lint_directive(site, directive)]
    return problems
