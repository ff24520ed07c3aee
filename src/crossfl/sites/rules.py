"""The catalog's rules that span several fields: what the site's scheduler allows (asked of
`crossfl.schedulers`), the facility's account rule, the published queue limits, an image
for the site's architecture; and the same rules applied to a rendered job script."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from crossfl import schedulers
from crossfl.schedulers import parse_walltime
from crossfl.schema import FieldError

if TYPE_CHECKING:
    from crossfl.sites.schema import Site


def check(site: Site) -> None:
    """Raise FieldError (reported under its field) for the first rule the site breaks."""
    _check_scheduler(site)
    _check_account(site)
    _check_limits(site)
    _check_container(site)


def _check_scheduler(site: Site) -> None:
    site.sched.check_site(site)
    if site.allowed_filesystems is not None:
        bad = [f for f in site.filesystems if f not in site.allowed_filesystems]
        if bad:
            raise FieldError("filesystems", f"{bad} not offered at this facility: "
                             f"choose from {site.allowed_filesystems}")
    for i, d in enumerate(site.directives):
        problem = site.sched.directive_problem(d)
        if problem:
            raise FieldError(f"directives[{i}]", problem)


def _check_account(site: Site) -> None:
    if not site.account_pattern:
        return
    try:
        rule = re.compile(site.account_pattern)
    except re.error as exc:
        raise FieldError("account_pattern", f"not a regular expression ({exc}): "
                         "fix the pattern") from None
    if site.account and not rule.search(site.account):
        raise FieldError("account", f"account {site.account!r} does not match this "
                         f"facility's rule {site.account_pattern!r}: use the account "
                         "of the right allocation")


def _check_limits(site: Site) -> None:
    key = site.limited_by()
    if site.queues and key is not None and key not in site.queues:
        raise FieldError(site.limits_by, f"{site.limits_by} {key!r} is not one of "
                         f"{sorted(site.queues)}: pick one or add it under queues")
    limit = site.queue_limit()
    if limit is None:
        return
    if limit.max_walltime and parse_walltime(site.walltime) > parse_walltime(limit.max_walltime):
        raise FieldError("walltime", f"walltime {site.walltime} is over the {key} "
                         f"{site.limits_by}'s maximum {limit.max_walltime}: lower it or "
                         f"pick another {site.limits_by}")
    if limit.max_nodes and site.nodes_per_block > limit.max_nodes:
        raise FieldError("nodes_per_block", f"{site.nodes_per_block} nodes is over the "
                         f"{key} {site.limits_by}'s maximum {limit.max_nodes}: lower it "
                         f"or pick another {site.limits_by}")


def _check_container(site: Site) -> None:
    if site.container.runtime == "none":
        return
    arch = site.arch
    if arch not in site.container.images:
        raise FieldError(f"container.images.{arch}",
                         f"no image for this site's architecture {arch!r} "
                         f"(accelerator.vendor {site.accelerator.vendor!r}): add "
                         f"container.images.{arch}, e.g. \"{{{{remote_root}}}}/images/"
                         f"crossfl-{arch}.sif\"")


def lint_script(site: Site, text: str) -> list[str]:
    """Problems with the scheduler directives of a rendered job script, by the site's rules:
    options the scheduler knows, PBS filesystems the facility offers, the walltime format
    and the queue's limit, no other scheduler's directives. Empty when the script is clean."""
    prefix = site.sched.directive_prefix
    if prefix is None:
        return []
    others = [p for p in schedulers.prefixes() if p != prefix]
    problems: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        other = next((p for p in others if line.startswith(p + " ")), None)
        if other is not None:
            problems.append(f"line {n}: {other} directive in a {site.scheduler} script")
            continue
        if line.startswith(prefix + " "):
            directive = line[len(prefix):].strip()
            problems += [f"line {n}: {p}" for p in site.sched.lint_directive(site, directive)]
    return problems
