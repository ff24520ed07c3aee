"""The options a user (or the server) may set per task group: the JSON schema the endpoint
checks them against (their types and forms, the names the catalog publishes) and the
`{{ name | default(...) }}` expressions the endpoint template uses. The facility's limits
(nodes, walltime per node-count bin, jobs per user) are not restated here: one rule engine,
`crossfl.sites.check_request`, holds every request to them before it reaches the endpoint
(render's user-config path, the server's plan), and the scheduler itself refuses a job
asked for some other way."""

from __future__ import annotations

import json
from typing import Any

from crossfl.schedulers.base import WALLTIME_JSON_PATTERN
from crossfl.sites import Site
from crossfl.sites.values import TOKEN

# What a name the endpoint passes on to the scheduler may hold (Parsl writes account, queue and
# QOS into #SBATCH lines, and hands PBS Pro's to `qsub` through a shell): the site files' own
# rule (crossfl.sites.values), checked again by the endpoint for each task group's options.
NAME_RULE = {"pattern": f"^{TOKEN}$"}

# GlobusComputeEngine's own default (globus_compute_endpoint/engines/globus_compute.py,
# _job_status_kwargs, version 4.19.0): a pilot idle this long is released.
ENGINE_MAX_IDLETIME_S = 120.0


def jinja_literal(value: Any) -> str:
    """A Jinja literal equal to what the endpoint would insert for `value` (strings arrive
    JSON-quoted, so the default must be JSON-quoted too)."""
    if isinstance(value, str):
        return repr(json.dumps(value))
    if isinstance(value, bool) or value is None:
        raise TypeError(f"unsupported default {value!r}")
    return repr(value)


def user_variables(site: Site) -> dict[str, dict[str, Any]]:
    """The variables a user (or the server) may set per task group, as JSON-schema properties.
    A property with a "default" is optional; the rest are required."""
    v: dict[str, dict[str, Any]] = {}
    sched = site.sched
    if sched.batch:
        acct: dict[str, Any] = {
            "type": "string",
            "minLength": 1,
            "allOf": [NAME_RULE],
            "description": "allocation/project charged for the pilot jobs",
        }
        if site.account:
            acct["default"] = site.account
        if site.account_pattern:
            acct["pattern"] = site.account_pattern
        v["account"] = acct
        if site.queue or sched.queue_required:
            q: dict[str, Any] = {
                "type": "string",
                "minLength": 1,
                "allOf": [NAME_RULE],
                "description": sched.queue_word,
            }
            if site.queue:
                q["default"] = site.queue
            v["queue"] = q
        if sched.has_qos and site.qos:
            v["qos"] = {
                "type": "string",
                "minLength": 1,
                "allOf": [NAME_RULE],
                "default": site.qos,
                "description": "quality of service",
            }
        part = site.node_part() is not None  # whole nodes or part of one: fixed at render
        tables = (
            [("queue", site.queues), ("qos", site.qos_limits)]
            if site.limits_by == "queue"
            else [("qos", site.queues)]
        )
        for key, table in tables:
            if key in v and table:
                v[key]["enum"] = sorted(n for n, e in table.items() if (e.part is not None) == part)
        v["walltime"] = {
            "type": "string",
            "pattern": WALLTIME_JSON_PATTERN,
            "default": site.walltime,
            "description": "pilot job walltime HH:MM:SS",
        }
        v["nodes_per_block"] = {
            "type": "integer",
            "minimum": 1,
            "default": site.nodes_per_block,
            "description": "nodes per pilot job",
        }
        v["max_blocks"] = {
            "type": "integer",
            "minimum": 1,
            "default": site.max_blocks,
            "description": "most pilot jobs at once",
        }
    else:
        v["max_workers_per_node"] = {
            "type": "integer",
            "minimum": 1,
            "default": site.endpoint.max_workers_per_node or 1,
            "description": "worker processes",
        }
    # How long an idle pilot is kept: the dispatch policy's lever (crossfl.server.dispatch).
    # The endpoint must outlive the engine's idle time: its idle heartbeats are 30 s each.
    v["max_idletime"] = {
        "type": "number",
        "minimum": 0,
        "default": ENGINE_MAX_IDLETIME_S,
        "description": "seconds an idle pilot job is kept before it is "
        "released (engine job_status_kwargs.max_idletime)",
    }
    v["idle_heartbeats_soft"] = {
        "type": "integer",
        "minimum": 0,
        "default": site.endpoint.idle_heartbeats_soft,
        "description": "idle 30 s heartbeats before the endpoint stops "
        "(0: never); above max_idletime / 30 to keep a "
        "warm pilot",
    }
    v["worker_init"] = {
        "type": "string",
        "default": site.fill(site.endpoint.worker_init_default),
        "description": "extra shell lines run before the workers start",
    }
    return v


def user_config_schema(site: Site) -> dict[str, Any]:
    props = user_variables(site)
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"crossfl {site.name} endpoint options",
        "type": "object",
        "properties": props,
        "additionalProperties": False,
    }
    required = [k for k, p in props.items() if "default" not in p]
    if required:
        schema["required"] = required
    # Names the catalog entry, for check_request in render_user_config (the endpoint ignores
    # unknown keywords).
    schema["x-crossfl-site"] = site.name
    return schema


def var_expr(name: str, prop: dict[str, Any]) -> str:
    """`{{ name }}` for the endpoint's Jinja, with the schema default where there is one."""
    if "default" in prop:
        return "{{ %s | default(%s) }}" % (name, jinja_literal(prop["default"]))
    return "{{ %s }}" % name
