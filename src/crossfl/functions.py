"""The kit's functions: all that an endpoint of the kit runs, one per task kind ("train",
"evaluate"). `crossfl deploy` registers them once with Globus Compute
(`Client.register_function`), records their ids in deploy/state/<site>.json and names them in
the endpoint's `allowed_functions`; the server submits them by those ids. Nothing else runs:
the web service refuses any other function for that endpoint, and the endpoint checks again.

- A site whose workers run in the image (`endpoint.tasks` per-device or per-node): the client's
  own `crossfl.client.tasks.train_round` and `evaluate`, serialized by reference (DillCode:
  module and name), so what runs is the code installed in the site's image.
- An MPI site (`endpoint.tasks: mpi`): its engine's one worker per pilot runs on the host,
  without crossfl, so each kind is the SDK's ShellFunction with text fixed for the site (its
  launcher, rank binding and image; crossfl.render.shell.mpi_task_script). Its only argument
  is the task key: the path of the task file, checked by the shell text itself before
  anything starts (one task, one key; never new shell text per task).

A function's digest says what was registered (the reference, or the shell text): deploy
registers again only when it changes, so the ids stay stable across deploys and runs.

The arguments travel as the engine allows (`allowed_serializers`, render.endpoint): an MPI
site's task key as JSON (JSONData), so a submission can carry no pickled object at all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crossfl.sites import Site

KINDS = ("train", "evaluate")
KEY_ARG = "task_key"  # the MPI task functions' only argument
CLIENT_ARGV = ["python", "-m", "crossfl.client", "run-task"]

# Import paths of the SDK's serialization strategies (the engines' allowed_serializers).
DILL_CODE = "globus_compute_sdk.serialize.DillCode"
DILL_DATA = "globus_compute_sdk.serialize.DillDataBase64"
JSON_DATA = "globus_compute_sdk.serialize.JSONData"


@dataclass(frozen=True)
class KitFunction:
    kind: str
    name: str
    fn: Callable[..., Any]
    digest: str  # sha256 of what is registered: the function's reference or its shell text
    description: str


def allowed_serializers(site: Site) -> list[str]:
    """What the site's engine deserializes: functions by DillCode only (by reference, or a
    ShellFunction's fields: no source text), arguments as JSON on an MPI site (its task key)
    and as dill elsewhere (the task carries adapter bytes inline: crossfl.client.contract)."""
    return [DILL_CODE, JSON_DATA if site.endpoint.tasks == "mpi" else DILL_DATA]


def kit_functions(site: Site) -> dict[str, KitFunction]:
    """The site's function per task kind (the same objects every call, so an Executor's
    registry of ids finds them)."""
    if site.endpoint.tasks == "mpi":
        return {kind: _shell_function(site, kind) for kind in KINDS}
    from crossfl.client import tasks

    out = {}
    for kind, fn in (("train", tasks.train_round), ("evaluate", tasks.evaluate)):
        ref = f"{fn.__module__}.{fn.__qualname__}"
        out[kind] = KitFunction(
            kind, fn.__name__, fn, _digest("python " + ref), f"crossfl {kind}: {ref}"
        )
    return out


def registered_functions(site: Site) -> list[tuple[Callable[..., Any], str]]:
    """The site's functions with the ids `crossfl deploy` registered them under
    (deploy/state): what the server submits, by id. A function that changed since (the site
    file, image or launcher did) is refused in one line: the endpoint would refuse it."""
    from crossfl.errors import UserError
    from crossfl.state import load_state, state_path

    state = load_state(site.name)
    recorded = state.functions if state is not None else {}
    out = []
    for kind, f in kit_functions(site).items():
        if kind not in recorded:
            continue  # deployed before the kit registered its functions: the SDK does
        if recorded[kind].digest != f.digest:
            raise UserError(
                f"site {site.name}: its {kind} function changed since `crossfl deploy` "
                "registered it (the site file, image or launcher changed), so the endpoint "
                "would refuse it",
                file=state_path(site.name),
                fix=f"run `crossfl deploy {site.name}` again, then start the run",
            )
        out.append((f.fn, recorded[kind].function_id))
    return out


_SHELL: dict[tuple[str, str, str], KitFunction] = {}


def shell_text(site: Site, kind: str) -> str:
    """The ShellFunction's command: `str.format`ted with the task key before it runs, so the
    shell's own braces are doubled and the key goes in as Python's repr (one quoted line)."""
    from crossfl.client.launcher_env import rank_argv
    from crossfl.render.shell import mpi_task_script

    argv = [CLIENT_ARGV[0], *rank_argv("", "")[:-2]] if kind == "train" else CLIENT_ARGV
    marker = "\0KEY\0"
    text = mpi_task_script(site, argv, marker)
    return text.replace("{", "{{").replace("}", "}}").replace(marker, "{%s!r}" % KEY_ARG)


def _shell_function(site: Site, kind: str) -> KitFunction:
    text = shell_text(site, kind)
    key = (site.name, kind, text)
    if key not in _SHELL:
        from globus_compute_sdk import ShellFunction

        name = "crossfl_train_ranks" if kind == "train" else "crossfl_evaluate_rank"
        fn = ShellFunction(text, name=name)
        _SHELL[key] = KitFunction(
            kind,
            name,
            fn,
            _digest(f"shell {name}\n{text}"),
            f"crossfl {kind} on {site.name}: ranks started by the MPI engine, one task key",
        )
    return _SHELL[key]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
