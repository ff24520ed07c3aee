"""Render a site into `build/sites/<name>/`: the Globus Compute 4.x endpoint directory and the
batch scripts, from site_templates/. Everything is computed in Python (endpoint.py, batch.py,
options.py); the templates only place plain values.

Our Jinja environment uses `<< >>`, `<% %>`, `<# #>` so that `{{ }}` / `{% %}` pass through
untouched into `user_config_template.yaml.j2`, which the endpoint renders itself later.
Rendering is atomic: a temporary directory beside the target is filled, then swapped in
(crossfl.atomic.new_dir).
"""

from __future__ import annotations

import json
from pathlib import Path

import jinja2

from crossfl import paths
from crossfl.atomic import current_umask, new_dir
from crossfl.errors import UserError
from crossfl.quoting import quote
from crossfl.redact import carries_secret
from crossfl.render import engine
from crossfl.render.batch import batch_context, build_only_context
from crossfl.render.endpoint import endpoint_context, identity_mapping
from crossfl.render.options import user_config_schema
from crossfl.sites import Site, load_site


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(paths.templates_dir())),
        undefined=jinja2.StrictUndefined,
        variable_start_string="<<",
        variable_end_string=">>",
        block_start_string="<%",
        block_end_string="%>",
        comment_start_string="<#",
        comment_end_string="#>",
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["yq"] = lambda v: json.dumps(v)  # a YAML-safe scalar (JSON is YAML)
    env.filters["sq"] = lambda v: quote(str(v))  # a shell word (crossfl.quoting.quote)
    return env


def _write(path: Path, text: str, *, executable: bool = False) -> None:
    """Write a rendered file: 0600 where it carries a secret (an activate line exporting a
    client secret, a token from the environment: crossfl.redact), else as the user's umask
    says (scripts executable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    full = 0o777 if executable else 0o666
    path.chmod(full & 0o700 if carries_secret(text) else full & ~current_umask())


def render_site(site: str | Site, out_root: Path | None = None) -> Path:
    """Render a site into out_root/<name> (default build/sites/<name>) atomically."""
    s = site if isinstance(site, Site) else load_site(site)
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
        for name in ("config.yaml", "user_config_template.yaml.j2", "user_environment.yaml"):
            _write(ep / name, env.get_template(f"endpoint/{name}").render(ctx))
        schema_text = json.dumps(user_config_schema(site), indent=2) + "\n"
        _write(ep / "user_config_schema.json", schema_text)
        if site.endpoint.mode == "multi-user":
            _write(
                ep / "identity_mapping.example.json",
                json.dumps(identity_mapping(site), indent=2) + "\n",
            )
        bctx = batch_context(site) if site.sched.batch else build_only_context(site)
        if site.sched.batch:
            for name in ("smoke.sh", "client.sh"):
                _write(
                    tmp / "batch" / name,
                    env.get_template(f"batch/{name}").render(bctx),
                    executable=True,
                )
        if bctx["build"] is not None:
            _write(
                tmp / "batch" / "build_image.sh",
                env.get_template("batch/build_image.sh").render(bctx),
                executable=True,
            )
    except jinja2.TemplateError as exc:
        raise UserError(
            f"template error: {exc}",
            file=getattr(exc, "filename", None) or paths.templates_dir(),
            fix="fix the template",
        ) from None
    # The example: the site's defaults, and a visible placeholder for each required option
    # (exempt from its pattern). Rendered by the endpoint's own code, after its core config
    # loaded, before anything becomes visible.
    schema = user_config_schema(site)
    example_opts = {k: p["default"] for k, p in schema["properties"].items() if "default" in p}
    for k in schema.get("required", []):
        example_opts[k] = f"<{k}>"
        schema["properties"][k] = {"type": "string"}
    schema.pop("required", None)
    core = engine.load_core(ep / "config.yaml", rewrite_from=ep_final, rewrite_to=ep)
    text = engine.render_with_endpoint(ep, core, example_opts, schema)
    header = (
        "# The user config the endpoint renders from user_config_template.yaml.j2 with the\n"
        f"# site's defaults: {json.dumps(example_opts, sort_keys=True)}\n"
        "# Each task group may override them (Executor(user_endpoint_config={...})).\n"
    )
    _write(ep / "user_config.example.yaml", header + text)
