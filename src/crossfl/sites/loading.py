"""Loading a site: the catalog entry (`deploy/sites/<name>.yaml`), the user's overrides
deep-merged over it, `${VAR}` / `${VAR:-default}` expanded from the environment, then the
schema. A bad value is one UserError naming the file it came from, the field and the fix."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from crossfl import paths
from crossfl.errors import UserError
from crossfl.schema import field_path, problems
from crossfl.sites.schema import Site
from crossfl.yamlio import load_mapping

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([-?])([^}]*))?\}")


def list_sites() -> list[str]:
    d = paths.sites_dir()
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.yaml") if not p.name.startswith("."))


def _resolve(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.parent != Path("."):
        if not p.is_file():
            raise UserError(
                "site file not found",
                file=p,
                fix="check the path, or give a site name from `crossfl sites`",
            )
        return p
    f = paths.sites_dir() / f"{name_or_path}.yaml"
    if not f.is_file():
        known = ", ".join(list_sites()) or "none"
        raise UserError(
            f"unknown site {str(name_or_path)!r}",
            file=f,
            fix=f"use one of: {known}, or add deploy/sites/{name_or_path}.yaml",
        )
    return f


Loc = tuple[str | int, ...]


class _Origins:
    """Which file each merged value came from: the catalog entry, unless an overrides file
    set the key (or a key above it)."""

    def __init__(self, catalog: Path) -> None:
        self.catalog = catalog
        self.set_by: dict[Loc, Path] = {}

    def merge(
        self, base: dict[str, Any], over: dict[str, Any], file: Path, at: Loc = ()
    ) -> dict[str, Any]:
        out = dict(base)
        for k, v in over.items():
            if isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k] = self.merge(out[k], v, file, (*at, k))
            else:
                out[k] = v
                self.set_by[(*at, k)] = file
        return out

    def file_of(self, loc: Loc) -> Path:
        """The file a value (or a block, for a check over several of its fields) came from."""
        for n in range(len(loc), 0, -1):
            if loc[:n] in self.set_by:
                return self.set_by[loc[:n]]
        below = [f for key, f in self.set_by.items() if loc and key[: len(loc)] == loc]
        return below[0] if below else self.catalog


def _parse_loc(field: str) -> Loc:
    """ "container.images.cuda" / "directives[1]" -> ("container", "images", "cuda") / (.., 1)."""
    return tuple(
        int(part[1:-1]) if part.startswith("[") else part
        for part in re.findall(r"\[\d+\]|[^.\[\]]+", field)
    )


def _expand(
    value: Any, origins: _Origins, unset: dict[str, tuple[str, str, str]], loc: Loc = ()
) -> Any:
    """Fill `${VAR}` / `${VAR:-default}` from the environment (an unset `${VAR}` is an error
    naming the field); `${VAR:?hint}` left unset becomes `<VAR>` and is recorded in `unset`,
    for `Site.require_set` to stop whatever needs it (the site still loads and renders)."""
    if isinstance(value, dict):
        return {k: _expand(v, origins, unset, (*loc, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, origins, unset, (*loc, i)) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        var, kind, arg = m.group(1), m.group(2), m.group(3)
        if var in os.environ:
            return os.environ[var]
        where = field_path(loc)
        if kind == "-":
            return arg
        if kind == "?":
            unset[where] = (var, arg, str(origins.file_of(loc)))
            return f"<{var}>"
        raise UserError(
            f"${{{var}}} is not set",
            file=origins.file_of(loc),
            field=where,
            fix=f"export {var}=..., or set {where} in the site's overrides file",
        )

    return _ENV_REF.sub(sub, value)


def overrides_path(name: str) -> Path | None:
    """The user's overrides for a site: $CROSSFL_SITE_OVERRIDES/<name>.yaml (a directory), or
    $CROSSFL_SITE_OVERRIDES itself when it names a file, else deploy/sites/overrides/<name>.yaml.
    A $CROSSFL_SITE_OVERRIDES that names nothing is an error, not a silent "no overrides"."""
    env = os.environ.get("CROSSFL_SITE_OVERRIDES")
    if env:
        p = Path(env)
        is_file = p.suffix in (".yaml", ".yml")
        if not (p.is_file() if is_file else p.is_dir()):
            raise UserError(
                f"CROSSFL_SITE_OVERRIDES names {'a file' if is_file else 'a directory'} "
                "that does not exist",
                file=p,
                fix="point it at your overrides file (or a directory of <site>.yaml files), "
                "or unset it",
            )
        cand = p if is_file else p / f"{name}.yaml"
        return cand if cand.is_file() else None
    cand = paths.sites_dir() / "overrides" / f"{name}.yaml"
    return cand if cand.is_file() else None


_GENERIC_FIX = (
    "see the comment at the top of the site file and the schema in src/crossfl/sites/schema.py"
)


def _errors(exc: ValidationError, origins: _Origins, overrides: Path | None) -> UserError:
    """One UserError naming, for each bad value, the file it came from."""
    found = [
        (p.field, p.message, p.fix or _GENERIC_FIX)
        for p in problems(exc, schema="src/crossfl/sites/schema.py")
    ]
    files = [origins.file_of(_parse_loc(field)) for field, _, _ in found]
    if len(found) == 1:
        (field, msg, fix), file = found[0], files[0]
        if overrides is not None and file != overrides:
            msg += f" (with overrides from {overrides})"
        return UserError(msg, file=file, field=field or None, fix=fix)
    main = files[0] if len(set(files)) == 1 else origins.catalog
    lines = [
        f"{field or '(top level)'}: {msg}"
        + ("" if fix == _GENERIC_FIX else f" (fix: {fix})")
        + ("" if file == main else f" (in {file})")
        for (field, msg, fix), file in zip(found, files, strict=True)
    ]
    return UserError(
        "invalid site:\n  " + "\n  ".join(lines), file=main, fix="correct each field listed"
    )


def load_site(name_or_path: str | Path, overrides: Path | None = None) -> Site:
    """Read a catalog entry, merge the user's overrides, expand ${VAR}s and validate. A bad
    value is reported against the file it came from (the catalog entry or the overrides)."""
    path = _resolve(name_or_path)
    data = load_mapping(path)
    data.setdefault("name", path.stem)
    ov = overrides if overrides is not None else overrides_path(str(data["name"]))
    origins = _Origins(path)
    if ov is not None:
        ov = Path(ov)
        if not ov.is_file():
            raise UserError("overrides file not found", file=ov, fix="check the path")
        data = origins.merge(data, load_mapping(ov), ov)
    unset: dict[str, tuple[str, str, str]] = {}
    data = _expand(data, origins, unset)
    try:
        site = Site.model_validate(data)
    except ValidationError as exc:
        raise _errors(exc, origins, ov) from None
    site._unset = unset
    return site


def with_deployed_image(site: Site) -> Site:
    """A podman-hpc site as deploy left it: its image named by the ID deploy recorded
    (deploy/state/SITE.json), not by the catalog's name, wherever the endpoint and the ranks
    name it. Other sites, and a site never deployed, are returned as they are."""
    from crossfl.state import load_state

    if site.container.runtime != "podman-hpc":
        return site
    state = load_state(site.name)
    if state is None or state.image is None:
        return site
    return site.with_image(state.image.sha256)
