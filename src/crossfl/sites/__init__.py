"""The facility catalog: `deploy/sites/*.yaml`, one pydantic schema (schema.py), the rules
that span fields (rules.py), loading with the user's overrides and `${VAR}`s (loading.py).

What differs per user (account, paths) comes from an overrides file
(`deploy/sites/overrides/<site>.yaml`, or `$CROSSFL_SITE_OVERRIDES/<site>.yaml`), deep-merged
over the catalog entry, and from `${VAR}` / `${VAR:-default}` references expanded from the
environment when the file is loaded (`${VAR:?hint}`: required only by what uses the field, e.g.
deploy). A bare `$VAR` is left alone: it belongs to the shell on the facility (e.g. `$HOME`,
`$PBS_NODEFILE`). Every mistake becomes one `UserError` naming the file, the field and the fix.

`check_request(site, user_options)` refuses, in one line, what the facility's published
limits make impossible (queue/QOS, nodes, walltime per node-count bin, jobs per user,
production on a debug QOS), before anything is submitted.
"""

from crossfl.schedulers import parse_walltime
from crossfl.sites.loading import list_sites, load_site, overrides_path, with_deployed_image
from crossfl.sites.rules import RequestRefused, check_request, lint_script
from crossfl.sites.schema import (
    VISIBLE_DEVICES_ENV,
    Accelerator,
    Bin,
    Container,
    Deploy,
    Endpoint,
    EndpointPython,
    ImageBuild,
    ImageSource,
    Launcher,
    Node,
    Part,
    Proxy,
    Queue,
    Site,
    Source,
    cpu_list,
    image_arch,
)

__all__ = [
    "VISIBLE_DEVICES_ENV",
    "Accelerator",
    "Bin",
    "Container",
    "Deploy",
    "Endpoint",
    "EndpointPython",
    "ImageBuild",
    "ImageSource",
    "Launcher",
    "Node",
    "Part",
    "Proxy",
    "Queue",
    "RequestRefused",
    "Site",
    "Source",
    "check_request",
    "cpu_list",
    "image_arch",
    "lint_script",
    "list_sites",
    "load_site",
    "overrides_path",
    "with_deployed_image",
    "parse_walltime",
]
