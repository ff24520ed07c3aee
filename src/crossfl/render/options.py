"""The options a user (or the server) may set per task group: the JSON schema the endpoint
checks them against, the `{{ name | default(...) }}` expressions the endpoint template uses,
and the published queue limits checked after the schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crossfl.errors import UserError
from crossfl.schedulers.base import WALLTIME_JSON_PATTERN, parse_walltime
from crossfl.sites import Site


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
        acct: dict[str, Any] = {"type": "string", "minLength": 1,
                                "description": "allocation/project charged for the pilot jobs"}
        if site.account:
            acct["default"] = site.account
        if site.account_pattern:
            acct["pattern"] = site.account_pattern
        v["account"] = acct
        if site.queue or sched.queue_required:
            q: dict[str, Any] = {"type": "string", "minLength": 1,
                                 "description": sched.queue_word}
            if site.queue:
                q["default"] = site.queue
            v["queue"] = q
        if sched.has_qos and site.qos:
            v["qos"] = {"type": "string", "minLength": 1, "default": site.qos,
                        "description": "quality of service"}
        limited = v.get("queue" if site.limits_by == "queue" else "qos")
        if limited is not None and site.queues:
            limited["enum"] = sorted(site.queues)
        v["walltime"] = {"type": "string", "pattern": WALLTIME_JSON_PATTERN,
                         "default": site.walltime, "description": "pilot job walltime HH:MM:SS"}
        v["nodes_per_block"] = {"type": "integer", "minimum": 1, "default": site.nodes_per_block,
                                "description": "nodes per pilot job"}
        v["max_blocks"] = {"type": "integer", "minimum": 1, "default": site.max_blocks,
                           "description": "most pilot jobs at once"}
    else:
        v["max_workers_per_node"] = {"type": "integer", "minimum": 1,
                                     "default": site.endpoint.max_workers_per_node or 1,
                                     "description": "worker processes"}
    v["worker_init"] = {"type": "string", "default": site.fill(site.endpoint.worker_init_default),
                        "description": "extra shell lines run before the workers start"}
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
    limits = queue_limits(site)
    if limits:
        var = limits["option"]
        rules = []
        for q, lim in limits["queues"].items():
            if lim.get("max_nodes") is None:
                continue
            then = {"properties": {"nodes_per_block": {"maximum": lim["max_nodes"]}}}
            rules.append({"if": {"properties": {var: {"const": q}}, "required": [var]},
                          "then": then})
            if q == limits["default"]:
                rules.append({"if": {"not": {"required": [var]}}, "then": then})
        if rules:
            schema["allOf"] = rules
        # Read by render_user_config (walltime against the queue's maximum); the endpoint
        # ignores unknown keywords.
        schema["x-crossfl-queue-limits"] = limits
    return schema


def queue_limits(site: Site) -> dict[str, Any] | None:
    """The published limits per queue/QOS option value, or None."""
    if not site.sched.batch or not site.queues:
        return None
    option = "queue" if site.limits_by == "queue" else "qos"
    return {"option": option, "default": site.limited_by(),
            "queues": {q: lim.model_dump() for q, lim in site.queues.items()}}


def check_queue_limits(schema: dict[str, Any], opts: dict[str, Any], where: Path) -> None:
    limits = schema.get("x-crossfl-queue-limits")
    if not limits:
        return
    props = schema.get("properties", {})
    queue = opts.get(limits["option"], limits["default"])
    walltime = opts.get("walltime", props.get("walltime", {}).get("default"))
    lim = limits["queues"].get(queue) or {}
    if not isinstance(walltime, str) or not lim.get("max_walltime"):
        return
    try:
        over = parse_walltime(walltime) > parse_walltime(lim["max_walltime"])
    except ValueError:
        return  # the schema's pattern reports the format
    if over:
        raise UserError(f"walltime {walltime} is over the {queue} {limits['option']}'s maximum "
                        f"{lim['max_walltime']}", file=where, field="walltime",
                        fix=f"ask for at most {lim['max_walltime']} or pick another "
                            f"{limits['option']} ({', '.join(sorted(limits['queues']))})")


def var_expr(name: str, prop: dict[str, Any]) -> str:
    """`{{ name }}` for the endpoint's Jinja, with the schema default where there is one."""
    if "default" in prop:
        return "{{ %s | default(%s) }}" % (name, jinja_literal(prop["default"]))
    return "{{ %s }}" % name
