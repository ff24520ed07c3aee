"""Script rules: the scheduler directives of a rendered job script held to the site (options
its scheduler knows, the walltime's form and the queue's limit, the filesystems the facility
offers, no other scheduler's directives)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from crossfl import schedulers
from crossfl.schedulers import parse_walltime

if TYPE_CHECKING:
    from crossfl.sites.schema import Site


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
            problems += [f"line {n}: {p}" for p in directive_problems(site, directive)]
    return problems


def directive_problems(site: Site, directive: str) -> list[str]:
    """Problems of one directive (without its prefix) by the site's rules: one its scheduler
    refuses, a walltime over the queue's maximum, a filesystem the facility does not offer."""
    sched = site.sched
    problem = sched.directive_problem(directive)
    if problem:
        return [problem]
    walltime = sched.directive_walltime(directive)
    if walltime is not None:
        try:
            seconds = sched.parse_time(walltime)
        except ValueError as exc:
            return [str(exc)]
        limit = site.queue_limit()
        if limit and limit.max_walltime and seconds > parse_walltime(limit.max_walltime):
            return [f"walltime {walltime} over the queue maximum {limit.max_walltime}"]
    offered = site.allowed_filesystems
    if offered is None:
        return []
    bad = [f for f in sched.directive_filesystems(directive) if f not in offered]
    return [f"filesystems {bad} not offered; choose from {offered}"] if bad else []
