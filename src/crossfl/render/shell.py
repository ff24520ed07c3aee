"""Shell pieces a compute node runs, computed from the site: modules, proxy and environment,
Apptainer's options, quoting, and the wrapper that gives each rank its device."""

from __future__ import annotations

import shlex

from crossfl.sites import Site


def export(name: str, value: str) -> str:
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
        lines.append(export(k, val))
    if site.container.runtime == "apptainer":
        for k, val in {**site.container.env, **acc_env}.items():
            lines.append(export(f"APPTAINERENV_{k}", val))
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


# Globus Compute's placeholders for `container_type: custom` (engines/globus_compute.py,
# containerized_launch_cmd): the engine's run directory and the worker command.
EXECUTOR_RUNDIR = "{EXECUTOR_RUNDIR}"
EXECUTOR_LAUNCH_CMD = "{EXECUTOR_LAUNCH_CMD}"


def engine_container(site: Site) -> tuple[str | None, str]:
    """The engine's `container_type` and `container_cmd_options`.

    Apptainer goes through `custom`, `apptainer run OPTIONS -B {EXECUTOR_RUNDIR} IMAGE
    {EXECUTOR_LAUNCH_CMD}`: the engine's own `apptainer` type binds nothing, and the worker
    command names its certificate and log directories under the engine's run directory (in
    ~/.globus_compute by default), which `--fakeroot` does not mount at their own path (it binds
    the home directory to /root). Binding the run directory itself keeps them where the command
    says, whatever the home directory and runtime options."""
    if site.container.runtime == "apptainer":
        words = ["apptainer", "run", container_options_text(site), "-B", EXECUTOR_RUNDIR,
                 shell_word(site.image() or ""), EXECUTOR_LAUNCH_CMD]
        return "custom", " ".join(w for w in words if w)
    if site.container.runtime == "custom":
        return "custom", site.fill(site.container.command)
    return None, ""


def bind_wrapper(site: Site) -> list[str]:
    """Shell lines that pick this rank's device from its local rank, where the launcher does
    not bind devices (PBS/PALS sites: `accelerator.bind: local-rank`)."""
    acc = site.accelerator
    if acc.bind != "local-rank" or not acc.devices_per_node:
        return []
    var = acc.visible_devices_env
    rank = site.sched.local_rank_env
    devs = " ".join(acc.rank_devices)
    return [f"devices=({devs})",
            f"export {var}=\"${{devices[$(( ${{{rank}:-0}} % {acc.devices_per_node} ))]}}\""]


def sources_a_file(line: str) -> bool:
    """Whether a setup line sources a script that exists only where the job runs."""
    return any(part.strip().split(" ", 1)[0] in ("source", ".") for part in line.split(";"))


def command_line(launch: list[str], *parts: str) -> str:
    words = [" ".join(shlex.quote(w) for w in launch), *parts]
    return " ".join(w for w in words if w)


def shell_path(p: str) -> str:
    """A path for a shell line: ~ becomes $HOME (so it expands inside quotes)."""
    return "$HOME/" + p[2:] if p.startswith("~/") else p


def shell_word(w: str) -> str:
    """Quote a word but let a leading $HOME/$VAR expand (image paths under the home directory)."""
    if w.startswith("$") and all(c not in w for c in " '\"`;&|<>()"):
        return f'"{w}"'
    return shlex.quote(w)
