"""Render a site into `build/sites/<name>/`: the Globus Compute 4.x endpoint directory and the
batch scripts. Everything is computed here; the templates only place plain values.

Our Jinja environment uses `<< >>`, `<% %>`, `<# #>` so that `{{ }}` / `{% %}` pass through
untouched into `user_config_template.yaml.j2`, which the endpoint renders itself later.
Rendering is atomic: a temporary directory beside the target is filled, then swapped in
(crossfl.atomic.new_dir).
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
from pathlib import Path
from typing import Any

import jinja2

from crossfl import paths
from crossfl.atomic import new_dir
from crossfl.errors import UserError
from crossfl.sites import Site, image_arch, load_site, parse_walltime

CLIENT_MODULE_CMD = "python -m crossfl.client run-task"
DESCRIBE_DEVICES_CMD = ("python -c 'import json; from crossfl.client.device import "
                        "describe_devices; print(json.dumps(describe_devices()))'")


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(paths.templates_dir())),
        undefined=jinja2.StrictUndefined,
        variable_start_string="<<", variable_end_string=">>",
        block_start_string="<%", block_end_string="%>",
        comment_start_string="<#", comment_end_string="#>",
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["yq"] = lambda v: json.dumps(v)  # a YAML-safe scalar (JSON is YAML)
    env.filters["sq"] = lambda v: shlex.quote(str(v))  # a shell word
    return env


# ---------------------------------------------------------------------------------------------
# The endpoint's own template variables

def _jinja_literal(value: Any) -> str:
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
    if site.scheduler != "local":
        acct: dict[str, Any] = {"type": "string", "minLength": 1,
                                "description": "allocation/project charged for the pilot jobs"}
        if site.account:
            acct["default"] = site.account
        if site.account_pattern:
            acct["pattern"] = site.account_pattern
        v["account"] = acct
        if site.queue or site.scheduler == "pbs":
            q: dict[str, Any] = {"type": "string", "minLength": 1,
                                 "description": "partition" if site.scheduler == "slurm" else "queue"}
            if site.queue:
                q["default"] = site.queue
            v["queue"] = q
        if site.scheduler == "slurm" and site.qos:
            v["qos"] = {"type": "string", "minLength": 1, "default": site.qos,
                        "description": "quality of service"}
        limited = v.get("queue" if site.limits_by == "queue" else "qos")
        if limited is not None and site.queues:
            limited["enum"] = sorted(site.queues)
        wt: dict[str, Any] = {"type": "string", "pattern": r"^\d{1,3}:[0-5]\d:[0-5]\d$",
                              "default": site.walltime, "description": "pilot job walltime HH:MM:SS"}
        v["walltime"] = wt
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
    limits = _queue_limits(site)
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


def _queue_limits(site: Site) -> dict[str, Any] | None:
    """The published limits per queue/QOS option value, or None."""
    if site.scheduler == "local" or not site.queues:
        return None
    option = "queue" if site.limits_by == "queue" else "qos"
    return {"option": option, "default": site.limited_by(),
            "queues": {q: lim.model_dump() for q, lim in site.queues.items()}}


def _check_queue_limits(schema: dict[str, Any], opts: dict[str, Any], where: Path) -> None:
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


def _var_expr(name: str, prop: dict[str, Any]) -> str:
    """`{{ name }}` for the endpoint's Jinja, with the schema default where there is one."""
    if "default" in prop:
        return "{{ %s | default(%s) }}" % (name, _jinja_literal(prop["default"]))
    return "{{ %s }}" % name


# ---------------------------------------------------------------------------------------------
# Facility pieces, computed

def _export(name: str, value: str) -> str:
    return f"export {name}={shlex.quote(value)}"


def host_env(site: Site) -> dict[str, str]:
    return {**site.proxy.env(), **site.env}


def setup_lines(site: Site, *, batch: bool) -> list[str]:
    """Shell lines that prepare a compute node: modules, proxy, environment, container env;
    the accelerator's environment for batch ranks or for the endpoint's workers."""
    lines: list[str] = []
    for d in site.module_use:
        lines.append(f"module use {shlex.quote(d)}")
    for m in site.modules:
        lines.append(f"module load {m}")
    acc_env = site.accelerator.rank_env if batch else site.accelerator.worker_env
    for k, val in {**host_env(site), **acc_env}.items():
        lines.append(_export(k, val))
    if site.container.runtime == "apptainer":
        for k, val in {**site.container.env, **acc_env}.items():
            lines.append(_export(f"APPTAINERENV_{k}", val))
    return lines


def container_options(site: Site) -> list[str]:
    """Flags for `apptainer exec/run`: vendor GPU flag, site options, binds."""
    opts: list[str] = []
    vendor = site.accelerator.vendor
    if vendor == "cuda":
        opts.append("--nv")
    elif vendor == "rocm":
        opts.append("--rocm")
    opts.extend(site.container.options)
    for b in site.container.binds:
        opts.extend(["-B", site.fill(b)])
    return opts


def container_options_text(site: Site) -> str:
    return " ".join(shlex.quote(o) for o in container_options(site))


def scheduler_directives(site: Site, *, for_pilot: bool) -> list[str]:
    """Directives (without prefix) the facility needs. For the pilot job Parsl already writes
    nodes/walltime (and Slurm partition/account/qos/constraint, PBS select); batch scripts get
    everything."""
    d: list[str] = []
    if not for_pilot:
        named = {"slurm": (("-A", site.account), ("-p", site.queue), ("-q", site.qos),
                           ("-C", site.constraint)),
                 "pbs": (("-A", site.account), ("-q", site.queue))}.get(site.scheduler, ())
        d += [f"{flag} {value}" for flag, value in named if value]
    acc = site.accelerator
    if site.scheduler == "slurm" and acc.devices_per_node and acc.bind == "scheduler":
        d.append(f"--gpus-per-node={acc.devices_per_node}")
    if site.scheduler == "pbs" and site.filesystems:
        d.append(f"-l filesystems={':'.join(site.filesystems)}")
    d.extend(site.directives)
    return d


def _prefix(site: Site) -> str:
    return {"slurm": "#SBATCH", "pbs": "#PBS"}.get(site.scheduler, "#")


def _check_passthrough(site: Site, values: list[str], what: str) -> None:
    for v in values:
        if "{{" in v or "{%" in v or "{#" in v:
            raise UserError(f"{what} contains Jinja markup {v!r}, which the endpoint would "
                            "evaluate", file=paths.sites_dir() / f"{site.name}.yaml", field=what,
                            fix="remove the braces (use ${VAR} for environment values)")


def endpoint_context(site: Site, endpoint_dir: Path) -> dict[str, Any]:
    props = user_variables(site)
    var = {k: _var_expr(k, p) for k, p in props.items()}
    facility_init = setup_lines(site, batch=False) + [site.fill(x) for x in site.worker_init]
    _check_passthrough(site, facility_init, "worker_init")
    # One YAML double-quoted scalar: the facility's lines, then the user's worker_init. The
    # endpoint inserts the user string JSON-quoted; its escapes are valid YAML escapes, so the
    # inner text is spliced in without a way to break out of the quotes.
    init_head = json.dumps("".join(line + "\n" for line in facility_init))[1:-1]
    worker_init_expr = '"%s{{ (worker_init | default(%s))[1:-1] }}"' % (
        init_head, _jinja_literal(props["worker_init"]["default"]))
    acc = site.accelerator
    mwpn: Any
    if site.scheduler == "local":
        mwpn = var["max_workers_per_node"]
    else:
        mwpn = site.endpoint.max_workers_per_node or max(acc.devices_per_node, 1)
    pilot = [f"{_prefix(site)} {d}" for d in scheduler_directives(site, for_pilot=True)]
    _check_passthrough(site, pilot, "directives")
    image = site.image()
    local = site.deploy.host is None  # an endpoint run from this checkout
    return {
        "site": site.name,
        "docs": site.docs,
        "display_name": site.endpoint.display_name or f"crossfl {site.name}",
        "allowed_functions": site.endpoint.allowed_functions,
        "multi_user": site.endpoint.mode == "multi-user",
        "endpoint_name": site.deploy.endpoint_name,
        "template_path": str(endpoint_dir / "user_config_template.yaml.j2") if local else None,
        "schema_path": str(endpoint_dir / "user_config_schema.json") if local else None,
        "scheduler": site.scheduler,
        "var": var,
        "worker_init_expr": worker_init_expr,
        "max_workers_per_node": mwpn,
        "accelerators": acc.device_ids if acc.devices_per_node else [],
        "cpu_affinity": site.endpoint.cpu_affinity,
        "encrypted": site.endpoint.encrypted,
        "address_interface": site.endpoint.address_interface,
        "idle_soft": site.endpoint.idle_heartbeats_soft,
        "idle_hard": site.endpoint.idle_heartbeats_hard,
        "provider": {"slurm": "SlurmProvider", "pbs": "PBSProProvider",
                     "local": "LocalProvider"}[site.scheduler],
        "init_blocks": site.init_blocks if site.scheduler != "local" else 1,
        "min_blocks": site.min_blocks,
        "max_blocks": site.max_blocks,
        "constraint": site.constraint,
        "cpus_per_node": site.cpus_per_node,
        "select_options": site.select_options,
        "scheduler_options": pilot,
        "launcher": {"srun": "SrunLauncher", "mpiexec": "MpiExecLauncher",
                     "single": "SingleNodeLauncher"}[site.launcher.type],
        "launcher_options": site.launcher.options,
        "mpiexec_bind_cmd": "--cpu-bind",
        "container": site.container.runtime != "none",
        "container_uri": image,
        "container_cmd_options": container_options_text(site),
        "user_env": site.endpoint.environment,
    }


# ---------------------------------------------------------------------------------------------
# Batch scripts

def _bind_wrapper(site: Site) -> list[str]:
    """Shell lines that pick this rank's device from its local rank (PBS/PALS sites)."""
    acc = site.accelerator
    if acc.bind != "local-rank" or not acc.devices_per_node:
        return []
    var = acc.visible_devices_env
    rank = "PMI_LOCAL_RANK" if site.scheduler == "pbs" else "SLURM_LOCALID"
    devs = " ".join(acc.rank_devices)
    return [f"devices=({devs})",
            f"export {var}=\"${{devices[$(( ${{{rank}:-0}} % {acc.devices_per_node} ))]}}\""]


def batch_context(site: Site) -> dict[str, Any]:
    acc = site.accelerator
    per_node = max(acc.devices_per_node, 1)
    nodes = 1
    limit = site.queue_limit()
    # The smoke test and the client job are short; keep them inside any debug limit.
    short = "00:10:00"
    if limit and limit.max_walltime and parse_walltime(limit.max_walltime) < parse_walltime(short):
        short = limit.max_walltime
    image = site.image()
    copts = container_options(site)
    in_image = ""
    if site.container.runtime == "apptainer":
        in_image = " ".join(_shell_word(w) for w in ["apptainer", "exec", *copts, image or ""])
    launch_all = _launch(site, nodes, per_node)
    launch_one = _launch(site, 1, 1)
    # `bind_rank` (a shell function) picks the device; the launcher starts bash to call it.
    prefix = "bash -c 'bind_rank \"$@\"' bind_rank" if _bind_wrapper(site) else ""
    build = site.container.build
    build_ctx = None
    if site.container.runtime == "apptainer" and build is not None and build.on_compute_node:
        build_ctx = {
            "directives": [d for d in scheduler_directives(site, for_pilot=False)
                           if not d.startswith("-q ")] +
                          ([f"-q {build.queue}"] if build.queue else
                           ([f"-q {site.queue}"] if site.queue else [])) + build.directives,
            "walltime": build.walltime,
            "module_use": build.module_use,
            "modules": build.modules,
            "env": {**site.proxy.env(), **build.env},
            "options": build.options,
            # crossfl.images writes the def with %files paths relative to the project root:
            # build from the directory that holds build/images/ (the site's remote root).
            "root": _shell_path(site.deploy.remote_root),
            "def_file": f"build/images/crossfl-{image_arch(site)}.def",
            "image": image,
        }
    return {
        "site": site.name,
        "scheduler": site.scheduler,
        "prefix": _prefix(site),
        "account": site.account,
        "directives": scheduler_directives(site, for_pilot=False),
        "nodes": nodes,
        "ntasks_per_node": per_node,
        "walltime": short,
        "select": _pbs_select(site, nodes),
        "setup": [{"text": line, "sources": _sources_a_file(line)} for line in
                  setup_lines(site, batch=True) + [site.fill(x) for x in site.worker_init] +
                  ([site.fill(site.endpoint.worker_init_default)]
                   if site.endpoint.worker_init_default else [])],
        "bind": _bind_wrapper(site),
        "smoke_line": _line(launch_all, prefix, in_image, DESCRIBE_DEVICES_CMD),
        "client_line": _line(launch_one, prefix, in_image, CLIENT_MODULE_CMD + ' "$task" "$out"'),
        "client_walltime": site.walltime,
        "submit": "qsub" if site.scheduler == "pbs" else "sbatch",
        "build": build_ctx,
    }


def identity_mapping(site: Site) -> list[dict[str, Any]]:
    """A Globus Connect-style expression mapping: user@DOMAIN -> local account `user`."""
    domain = (site.endpoint.identity_domain or "").replace(".", r"\.")
    return [{"comment": f"crossfl {site.name}: Globus identities of {site.endpoint.identity_domain} "
                        "to local accounts of the same name",
             "DATA_TYPE": "expression_identity_mapping#1.0.0",
             "mappings": [{"source": "{username}", "match": f"(.*)@{domain}", "output": "{0}"}]}]


def _sources_a_file(line: str) -> bool:
    """Whether a setup line sources a script that exists only where the job runs."""
    return any(part.strip().split(" ", 1)[0] in ("source", ".") for part in line.split(";"))


def _line(launch: list[str], *parts: str) -> str:
    words = [" ".join(shlex.quote(w) for w in launch), *parts]
    return " ".join(w for w in words if w)


def _launch(site: Site, nodes: int, ranks_per_node: int) -> list[str]:
    """The parallel launcher line for a batch job: one rank per device."""
    acc = site.accelerator
    extra = shlex.split(site.cpu_bind) if site.cpu_bind else []
    if site.launcher.type == "srun":
        words = ["srun", f"--nodes={nodes}", f"--ntasks-per-node={ranks_per_node}"]
        if acc.devices_per_node and acc.bind == "scheduler":
            words += ["--gpus-per-task=1", "--gpu-bind=closest"]
        return words + extra
    if site.launcher.type == "mpiexec":
        return ["mpiexec", "-n", str(nodes * ranks_per_node), "--ppn", str(ranks_per_node),
                *extra]
    return []


def _shell_path(p: str) -> str:
    """A path for a shell line: ~ becomes $HOME (so it expands inside quotes)."""
    return "$HOME/" + p[2:] if p.startswith("~/") else p


def _shell_word(w: str) -> str:
    """Quote a word but let a leading $HOME/$VAR expand (image paths under the home directory)."""
    if w.startswith("$") and all(c not in w for c in " '\"`;&|<>()"):
        return f'"{w}"'
    return shlex.quote(w)


def _pbs_select(site: Site, nodes: int) -> str:
    sel = f"select={nodes}"
    if site.select_options:
        sel += ":" + site.select_options.lstrip(":")
    return sel


# ---------------------------------------------------------------------------------------------
# Rendering

def _site(site: str | Site) -> Site:
    return site if isinstance(site, Site) else load_site(site)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def render_site(site: str | Site, out_root: Path | None = None) -> Path:
    """Render a site into out_root/<name> (default build/sites/<name>) atomically."""
    s = _site(site)
    out_root = Path(out_root) if out_root is not None else paths.build_dir() / "sites"
    target = (out_root / s.name).absolute()
    env = _env()
    with new_dir(target) as tmp:
        _render_into(env, s, tmp, final=target)
    return target


def _render_into(env: jinja2.Environment, site: Site, tmp: Path, *, final: Path) -> None:
    ep_final = final / "endpoint"
    ctx = endpoint_context(site, ep_final)
    ep = tmp / "endpoint"
    try:
        _write(ep / "config.yaml", env.get_template("endpoint/config.yaml").render(ctx))
        _write(ep / "user_config_template.yaml.j2",
               env.get_template("endpoint/user_config_template.yaml.j2").render(ctx))
        _write(ep / "user_environment.yaml",
               env.get_template("endpoint/user_environment.yaml").render(ctx))
        _write(ep / "user_config_schema.json", json.dumps(user_config_schema(site), indent=2) + "\n")
        if site.endpoint.mode == "multi-user":
            _write(ep / "identity_mapping.example.json",
                   json.dumps(identity_mapping(site), indent=2) + "\n")
        if site.scheduler != "local":
            bctx = batch_context(site)
            for name in ("smoke.sh", "client.sh"):
                _write(tmp / "batch" / name,
                       env.get_template(f"batch/{name}").render(bctx), 0o755)
            if bctx["build"] is not None:
                _write(tmp / "batch" / "build_image.sh",
                       env.get_template(f"batch/{site.scheduler}/build_image.sh").render(bctx),
                       0o755)
    except jinja2.TemplateError as exc:
        raise UserError(f"template error: {exc}", file=getattr(exc, "filename", None)
                        or paths.templates_dir(), fix="fix the template") from None
    # The example: the site's defaults, and a visible placeholder for each required option
    # (exempt from its pattern). Rendered by the endpoint's own code, after its core config
    # loaded, before anything becomes visible.
    schema = user_config_schema(site)
    example_opts = {k: p["default"] for k, p in schema["properties"].items() if "default" in p}
    for k in schema.get("required", []):
        example_opts[k] = f"<{k}>"
        schema["properties"][k] = {"type": "string"}
    schema.pop("required", None)
    core = _load_core(ep / "config.yaml", rewrite_from=ep_final, rewrite_to=ep)
    text = _render_with_endpoint(ep, core, example_opts, schema)
    header = ("# The user config the endpoint renders from user_config_template.yaml.j2 with the\n"
              f"# site's defaults: {json.dumps(example_opts, sort_keys=True)}\n"
              "# Each task group may override them (Executor(user_endpoint_config={...})).\n")
    _write(ep / "user_config.example.yaml", header + text)


# ---------------------------------------------------------------------------------------------
# The endpoint's own rendering

def _load_core(config_path: Path, rewrite_from: Path | None = None, rewrite_to: Path | None = None):
    from globus_compute_endpoint.endpoint.config.utils import load_config_yaml
    text = config_path.read_text()
    if rewrite_from is not None and rewrite_to is not None:
        text = text.replace(str(rewrite_from), str(rewrite_to))
    try:
        return load_config_yaml(text)
    except Exception as exc:  # click.ClickException with a readable message
        raise UserError(f"the endpoint refuses the rendered config: {_exc_text(exc)}",
                        file=config_path, fix="render the site again (`crossfl render SITE`); "
                        "if that fails too, fix the site file or template") from None


def _exc_text(exc: BaseException) -> str:
    msg = getattr(exc, "message", None) or str(exc)
    return " ".join(str(msg).split())


def _identity():
    from globus_compute_endpoint.endpoint.identity_mapper import MappedPosixIdentity
    rec = pwd.getpwuid(os.getuid())
    return MappedPosixIdentity(local_user_record=rec, globus_identity_candidates=[],
                               matched_identity=None)


def _render_with_endpoint(ep: Path, core: Any, user_opts: dict[str, Any],
                          schema: dict[str, Any] | None = None) -> str:
    import jsonschema
    from globus_compute_endpoint.endpoint.config.utils import (
        load_user_config_schema, render_config_user_template)
    tpl_path = ep / "user_config_template.yaml.j2"
    if schema is None:
        schema = load_user_config_schema(ep / "user_config_schema.json")
    try:
        return render_config_user_template(
            parent_config=core, user_config_template=tpl_path.read_text(),
            user_config_template_path=tpl_path, mapped_identity=_identity(),
            user_config_schema=schema, user_opts=user_opts)
    except jsonschema.ValidationError as exc:
        raise UserError(_option_message(exc, schema or {}), file=tpl_path.parent /
                        "user_config_schema.json", field=_option_name(exc),
                        fix=_option_fix(exc, schema or {})) from None
    except ValueError as exc:  # reserved word
        raise UserError(str(exc), field="user options", fix="rename the option") from None
    except jinja2.TemplateError as exc:
        raise UserError(f"the endpoint template does not render: {exc}", file=tpl_path,
                        fix="pass the option or give it a default in the schema") from None


def _option_name(exc: Any) -> str:
    if exc.validator == "required":
        missing = [r for r in exc.validator_value if r not in (exc.instance or {})]
        return missing[0] if missing else "options"
    if exc.validator == "additionalProperties":
        return "options"
    return ".".join(str(p) for p in exc.absolute_path) or "options"


def _option_message(exc: Any, schema: dict[str, Any]) -> str:
    name = _option_name(exc)
    if exc.validator == "required":
        return f"option {name!r} is required"
    if exc.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extra = sorted(set(exc.instance) - set(allowed))
        return f"unknown option(s) {extra}; this site takes {allowed}"
    return f"option {name!r} = {exc.instance!r} is invalid: {exc.message}"


def _option_fix(exc: Any, schema: dict[str, Any]) -> str:
    name = _option_name(exc)
    prop = schema.get("properties", {}).get(name, {})
    if exc.validator == "required":
        return (f"pass {name} in the user options, or set {name} in the site's overrides "
                "file (deploy/sites/overrides/<site>.yaml)")
    if exc.validator == "additionalProperties":
        return "drop the unknown options"
    if exc.validator == "maximum":
        return f"at most {exc.validator_value} here (the queue's limit)"
    if "enum" in prop:
        return f"use one of {prop['enum']}"
    if "pattern" in prop:
        example = " (e.g. 01:00:00)" if name == "walltime" else ""
        return f"match the pattern {prop['pattern']}{example}"
    if prop.get("type") == "integer":
        lo, hi = prop.get("minimum"), prop.get("maximum")
        return f"give an integer{f' >= {lo}' if lo is not None else ''}{f' <= {hi}' if hi is not None else ''}"
    return f"give a {prop.get('type', 'valid value')}"


def render_user_config(site_build_dir: Path, user_opts: dict | None = None) -> str:
    """Render a rendered site's endpoint template with user options, exactly as the endpoint
    does (schema validation, JSON-quoting). Returns the user config YAML text."""
    ep = Path(site_build_dir) / "endpoint"
    cfg = ep / "config.yaml"
    if not cfg.is_file():
        raise UserError("no rendered endpoint here", file=cfg,
                        fix="run `crossfl render <site>` first")
    core = _load_core(cfg)
    opts = dict(user_opts or {})
    schema_path = ep / "user_config_schema.json"
    schema = json.loads(schema_path.read_text())
    text = _render_with_endpoint(ep, core, opts)
    _check_queue_limits(schema, opts, schema_path)
    return text


def load_user_config(text: str) -> Any:
    """Parse a rendered user config with the endpoint's own loader: a `UserEndpointConfig`
    whose engine, provider and launcher are built (nothing is started). A facility config
    resolves its network interface (e.g. hsn0) while loading."""
    from globus_compute_endpoint.endpoint.config.utils import load_config_yaml
    return load_config_yaml(text)
