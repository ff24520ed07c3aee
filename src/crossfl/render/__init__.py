"""Rendering a site (crossfl.sites) into `build/sites/<name>/`: the endpoint directory and the
batch scripts.

options.py   the per-task-group options: JSON schema, template expressions, queue limits
shell.py     shell pieces: setup lines, Apptainer options, device per rank
endpoint.py  what the endpoint templates place (provider and launcher from crossfl.schedulers)
batch.py     what the batch templates place (smoke test, client job, image build)
engine.py    the endpoint's own loader and renderer (user configs, option errors)
bundle.py    render_site: templates into a directory, swapped in atomically
"""

from crossfl.render.batch import CLIENT_MODULE_CMD, DESCRIBE_DEVICES_CMD, batch_context
from crossfl.render.bundle import render_site
from crossfl.render.endpoint import endpoint_context, identity_mapping
from crossfl.render.engine import load_user_config, render_user_config
from crossfl.render.options import user_config_schema, user_variables
from crossfl.render.shell import (
    container_options,
    container_options_text,
    engine_container,
    setup_lines,
)

__all__ = [
    "CLIENT_MODULE_CMD",
    "DESCRIBE_DEVICES_CMD",
    "batch_context",
    "container_options",
    "container_options_text",
    "endpoint_context",
    "engine_container",
    "identity_mapping",
    "load_user_config",
    "render_site",
    "render_user_config",
    "setup_lines",
    "user_config_schema",
    "user_variables",
]
