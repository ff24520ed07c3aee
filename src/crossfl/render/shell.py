"""Shell pieces a compute node runs, computed from the site: modules, proxy and environment,
the container runtime's options (Apptainer, podman-hpc) and the wrapper that gives
each batch rank its device the way Parsl's worker pool gives a worker its accelerator."""

from __future__ import annotations

from crossfl.client.launcher_env import LAUNCHED_AT_ENV, rank_env_names
from crossfl.quoting import quote
from crossfl.sites import Site

# What Parsl's worker pool exports for a worker's accelerator `a` (all of them, whatever the
# vendor: parsl/executors/high_throughput/process_worker_pool.py, `worker()`, "If desired, pin
# to accelerator"); batch ranks get the same, so the smoke test sees what the workers see.
PARSL_ACCELERATOR_ENV = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK")
PARSL_FIXED_ENV = {"ZE_ENABLE_PCI_ID_DEVICE_ORDER": "1"}
RANK_ENV = "CROSSFL_LOCAL_RANK"  # the batch rank's index on its node, for the smoke report
# What NERSC's own MPI module gives a rank's podman-hpc container (etc/modules.d/mpich.yaml in
# github.com/NERSC/podman-hpc: "--ipc=host", "--network=host", bind "/dev/shm:/dev/shm";
# checked 2026-12-07): the host's interfaces (NCCL_SOCKET_IFNAME=hsn names them; a private
# network namespace has none), the host's IPC namespace and its /dev/shm instead of podman's
# 64 MB one (NCCL's intra-node transport lives there). Not the module itself: it also sets
# LD_LIBRARY_PATH to the host's MPICH and --privileged, which a torch rank needs neither of.
SHARED_RUN_HOST = ("--network=host", "--ipc=host", "-v", "/dev/shm:/dev/shm")


def export(name: str, value: str) -> str:
    return f"export {name}={quote(value)}"


def host_env(site: Site) -> dict[str, str]:
    return {**site.proxy.env(), **site.env}


def setup_lines(site: Site, *, batch: bool) -> list[str]:
    """Shell lines that prepare a compute node: modules, proxy, environment and the
    accelerator's device convention (the same for the endpoint's workers and batch ranks);
    with Apptainer, the container's environment as APPTAINERENV_*. (podman-hpc takes the
    environment as `-e` options instead: container_options.)"""
    lines: list[str] = []
    for d in site.module_use:
        lines.append(f"module use {quote(d)}")
    for m in site.modules:
        lines.append(f"module load {quote(m)}")
    acc_env = site.accelerator.env
    for k, val in {**host_env(site), **acc_env}.items():
        lines.append(export(k, val))
    if site.container.runtime == "apptainer":
        for k, val in {**site.container.env, **acc_env}.items():
            lines.append(export(f"APPTAINERENV_{k}", val))
    return lines


def container_env(site: Site) -> dict[str, str]:
    """The environment a podman-hpc container needs from the host (podman passes none)."""
    return {**host_env(site), **site.container.env, **site.accelerator.env}


def container_options(site: Site) -> list[str]:
    """Options for the runtime's run/exec: GPU flag, site options, binds (and, for
    podman-hpc, the environment)."""
    opts: list[str] = []
    vendor = site.accelerator.vendor
    runtime = site.container.runtime
    if runtime == "apptainer":
        opts += {"cuda": ["--nv"], "rocm": ["--rocm"]}.get(vendor, [])
    elif runtime == "podman-hpc":
        # NERSC's podman-hpc module flag for NVIDIA GPUs (etc/modules.d/gpu.yaml).
        opts += {"cuda": ["--gpu"]}.get(vendor, [])
    opts.extend(site.container.options)
    for b in site.container.binds:
        if runtime == "podman-hpc":
            src, _, dst = site.fill(b).partition(":")
            opts.extend(["-v", f"{src}:{dst or src}"])
        else:
            opts.extend(["-B", site.fill(b)])
    if runtime == "podman-hpc":
        for k, val in container_env(site).items():
            opts.extend(["-e", f"{k}={val}"])
    return opts


def container_options_text(site: Site) -> str:
    return " ".join(quote(o) for o in container_options(site))


def container_words(site: Site) -> list[str]:
    """A rank's command prefix (batch scripts, MPI tasks) that runs the rest inside the site's
    image. podman-hpc: `shared-run`, "the recommended way to launch a container from a
    parallel launcher such as Slurm `srun`" (one container per node, each rank `exec`ed into
    it: github.com/NERSC/podman-hpc, podman_hpc.py), given the device and rank variables by
    name (podman passes no host environment)."""
    runtime = site.container.runtime
    image = site.image() or ""
    if runtime == "apptainer":
        return ["apptainer", "exec", *container_options(site), image]
    if runtime == "podman-hpc":
        names = (
            *PARSL_ACCELERATOR_ENV,
            *PARSL_FIXED_ENV,
            RANK_ENV,
            LAUNCHED_AT_ENV,
            *rank_env_names(site.launcher.type),
        )
        passed = [w for name in names for w in ("-e", name)]
        return [
            "podman-hpc",
            "shared-run",
            *container_options(site),
            *SHARED_RUN_HOST,
            *passed,
            "-v",
            "$PWD:$PWD",
            "-w",
            "$PWD",
            image,
        ]
    return []


# Parsl's MPI mode sets this in the worker for each task: the site's srun / mpiexec with the
# task's nodes and ranks (resource_specification) and its launcher_options.
MPI_PREFIX = "$PARSL_MPI_PREFIX"


def rank_line(site: Site, argv: list[str], *, bound_by: str) -> str:
    """What each rank runs: its device binding (where `accelerator.bind: local-rank`: the
    lines of `bind_wrapper`, in `bound_by`: "function" calls the exported `bind_rank` of a
    batch script, "inline" carries the lines), then the image, then `argv`."""
    bind = bind_wrapper(site)
    words: list[str] = []
    if bind and bound_by == "function":
        words = ["bash", "-c", 'bind_rank "$@"', "bind_rank"]
    elif bind:
        words = ["bash", "-c", "; ".join([*bind, 'exec "$@"']), "bind_rank"]
    image = " ".join(quote(w) for w in container_words(site))
    joined = (" ".join(quote(w) for w in ws) for ws in (words, argv))
    return " ".join(p for p in (next(joined), image, next(joined)) if p)


def mpi_task_line(site: Site, argv: list[str]) -> str:
    """The shell line of an MPI task (a ShellFunction on the site's GlobusMPIEngine): the launch
    time (the task's wall counts from it), then the engine's launcher prefix, then each rank
    bound to its device, inside the image, running `argv`."""
    return (
        f'export {LAUNCHED_AT_ENV}="$(date +%s.%N)"; '
        f"{MPI_PREFIX} {rank_line(site, argv, bound_by='inline')}"
    )


# The only argument of an MPI site's registered task function (crossfl.functions): the path of
# a task file, `/DIR/tasks/NAME.json`; rank 0 writes its result to `/DIR/results/NAME.out.json`.
TASK_KEY_RULE = r"^'(/[A-Za-z0-9_.,@+=/-]+)/tasks/([A-Za-z0-9_.-]+)\.json'$"


def mpi_task_script(site: Site, argv: list[str], key_placeholder: str) -> str:
    """The shell text of an MPI site's task function: `key_placeholder` (where the function's
    caller puts the task key, as Python's repr writes it: one line, quoted) is read from a
    quoted here-document, so nothing in it is ever run; a key that is not a task file's
    path (TASK_KEY_RULE, no `.`/`..` parts) stops it with exit status 2 before anything
    starts; then `mpi_task_line` with the task file and its result file after `argv`."""
    return "\n".join(
        [
            "read -r key <<'CROSSFL_TASK_KEY'",
            key_placeholder,
            "CROSSFL_TASK_KEY",
            f"rule={quote(TASK_KEY_RULE)}",
            'if [[ $key == *"/../"* || $key == *"/./"* || ! $key =~ $rule ]]; then',
            "  echo \"crossfl: refused task key $key (want '/DIR/tasks/NAME.json')\" >&2",
            "  exit 2",
            "fi",
            'task="${BASH_REMATCH[1]}/tasks/${BASH_REMATCH[2]}.json"',
            'out="${BASH_REMATCH[1]}/results/${BASH_REMATCH[2]}.out.json"',
            mpi_task_line(site, [*argv, "$task", "$out"]),
        ]
    )


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
        words = [
            "apptainer",
            "run",
            container_options_text(site),
            "-B",
            EXECUTOR_RUNDIR,
            quote(site.image() or ""),
            EXECUTOR_LAUNCH_CMD,
        ]
        return "custom", " ".join(w for w in words if w)
    if site.container.runtime == "podman-hpc":  # the engine adds -v RUNDIR:RUNDIR and -t
        return "podman-hpc", container_options_text(site)
    if site.container.runtime == "custom":
        return "custom", site.fill(site.container.command)
    return None, ""


def bind_wrapper(site: Site) -> list[str]:
    """Shell lines that give this rank, from its local rank, what Parsl's worker pool gives
    worker i (the device ids[i], in the same variables), where the launcher does not bind
    devices (`accelerator.bind: local-rank`). Part of a shared node: the scheduler's own
    binding stands, as it does for the single worker there."""
    acc = site.accelerator
    if acc.bind != "local-rank" or not acc.devices_per_node or site.node_part() is not None:
        return []
    devs = " ".join(quote(d) for d in acc.rank_devices)
    exports = " ".join(
        [f'{v}="$device"' for v in PARSL_ACCELERATOR_ENV]
        + [f"{k}={v}" for k, v in PARSL_FIXED_ENV.items()]
    )
    return [
        f"devices=({devs})",
        f"rank=${{{site.local_rank_env}:-0}}",
        f'device="${{devices[$(( rank % {len(acc.rank_devices)} ))]}}"',
        f'export {RANK_ENV}="$rank" {exports}',
    ]


def sources_a_file(line: str) -> bool:
    """Whether a setup line sources a script that exists only where the job runs."""
    return any(part.strip().split(" ", 1)[0] in ("source", ".") for part in line.split(";"))


def command_line(launch: list[str], *parts: str) -> str:
    words = [" ".join(quote(w) for w in launch), *parts]
    return " ".join(w for w in words if w)
