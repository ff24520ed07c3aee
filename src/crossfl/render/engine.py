"""The Globus Compute endpoint's own rendering, used as the endpoint uses it: its loader for
the core config, its renderer for the user config template (schema check, JSON-quoting), and
its schema errors turned into one UserError naming the option and the fix."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path
from typing import Any

import jinja2

from crossfl.errors import UserError


def load_core(config_path: Path, rewrite_from: Path | None = None, rewrite_to: Path | None = None):
    from globus_compute_endpoint.endpoint.config.utils import load_config_yaml

    text = config_path.read_text()
    if rewrite_from is not None and rewrite_to is not None:
        text = text.replace(str(rewrite_from), str(rewrite_to))
    try:
        return load_config_yaml(text)
    except Exception as exc:  # click.ClickException with a readable message
        raise UserError(
            f"the endpoint refuses the rendered config: {_exc_text(exc)}",
            file=config_path,
            fix="render the site again (`crossfl render SITE`); "
            "if that fails too, fix the site file or template",
        ) from None


def _exc_text(exc: BaseException) -> str:
    msg = getattr(exc, "message", None) or str(exc)
    return " ".join(str(msg).split())


def _identity():
    from globus_compute_endpoint.endpoint.identity_mapper import MappedPosixIdentity

    rec = pwd.getpwuid(os.getuid())
    return MappedPosixIdentity(
        local_user_record=rec, globus_identity_candidates=[], matched_identity=None
    )


def render_with_endpoint(
    ep: Path, core: Any, user_opts: dict[str, Any], schema: dict[str, Any] | None = None
) -> str:
    import jsonschema
    from globus_compute_endpoint.endpoint.config.utils import (
        load_user_config_schema,
        render_config_user_template,
    )

    tpl_path = ep / "user_config_template.yaml.j2"
    if schema is None:
        schema = load_user_config_schema(ep / "user_config_schema.json")
    try:
        return render_config_user_template(
            parent_config=core,
            user_config_template=tpl_path.read_text(),
            user_config_template_path=tpl_path,
            mapped_identity=_identity(),
            user_config_schema=schema,
            user_opts=user_opts,
        )
    except jsonschema.ValidationError as exc:
        raise UserError(
            _option_message(exc, schema or {}),
            file=tpl_path.parent / "user_config_schema.json",
            field=_option_name(exc),
            fix=_option_fix(exc, schema or {}),
        ) from None
    except ValueError as exc:  # reserved word
        raise UserError(str(exc), field="user options", fix="rename the option") from None
    except jinja2.TemplateError as exc:
        raise UserError(
            f"the endpoint template does not render: {exc}",
            file=tpl_path,
            fix="pass the option or give it a default in the schema",
        ) from None


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
        return (
            f"pass {name} in the user options, or set {name} in the site's overrides "
            "file (deploy/sites/overrides/<site>.yaml)"
        )
    if exc.validator == "additionalProperties":
        return "drop the unknown options"
    if exc.validator == "maximum":
        return f"at most {exc.validator_value} here (the queue's limit)"
    if "enum" in prop:
        return f"use one of {prop['enum']}"
    if exc.validator == "pattern":
        example = " (e.g. 01:00:00)" if name == "walltime" else ""
        return f"match the pattern {exc.validator_value}{example}"
    if prop.get("type") == "integer":
        lo, hi = prop.get("minimum"), prop.get("maximum")
        bounds = (f" >= {lo}" if lo is not None else "") + (f" <= {hi}" if hi is not None else "")
        return f"give an integer{bounds}"
    return f"give a {prop.get('type', 'valid value')}"


def render_user_config(
    site_build_dir: Path, user_opts: dict | None = None, site: Any = None
) -> str:
    """Render a rendered site's endpoint template with user options, exactly as the endpoint
    does (schema validation, JSON-quoting). Returns the user config YAML text. First, the
    facility's published rules (`crossfl.sites.check_request`, for `site` or the catalog entry
    the schema names) refuse an impossible request in one line."""
    ep = Path(site_build_dir) / "endpoint"
    cfg = ep / "config.yaml"
    if not cfg.is_file():
        raise UserError(
            "no rendered endpoint here", file=cfg, fix="run `crossfl render <site>` first"
        )
    core = load_core(cfg)
    opts = dict(user_opts or {})
    schema_path = ep / "user_config_schema.json"
    schema = json.loads(schema_path.read_text())
    name = schema.get("x-crossfl-site")
    if site is None and name:
        from crossfl.sites import load_site

        site = load_site(name)
    if site is not None:
        from crossfl.sites import check_request

        check_request(site, opts)
    return render_with_endpoint(ep, core, opts)


def load_user_config(text: str) -> Any:
    """Parse a rendered user config with the endpoint's own loader: a `UserEndpointConfig`
    whose engine, provider and launcher are built (nothing is started). A facility config
    resolves its network interface (e.g. hsn0) while loading."""
    from globus_compute_endpoint.endpoint.config.utils import load_config_yaml

    return load_config_yaml(text)
