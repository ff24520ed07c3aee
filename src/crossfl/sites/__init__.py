"""The facility catalog: `deploy/sites/*.yaml`, one pydantic schema (schema.py), loading with
the user's overrides and `${VAR}`s (loading.py), and the rules, one job per module: what a
site file must hold together (catalog_rules.py), a request against the published limits
(request_rules.py), a rendered job script's directives (script_rules.py). jobs.py builds the
values the site's scheduler and launcher work from (crossfl.schedulers.spec): the
dependency runs one way, sites -> schedulers.

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

from crossfl.schedulers import cpu_list, parse_walltime
from crossfl.sites.jobs import binding, job_spec
from crossfl.sites.loading import list_sites, load_site, overrides_path, with_deployed_image
from crossfl.sites.request_rules import RequestRefused, check_request
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
    LauncherSettings,
    Node,
    Part,
    Proxy,
    Queue,
    Site,
    Source,
    image_arch,
)
from crossfl.sites.script_rules import lint_script

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
    "LauncherSettings",
    "Node",
    "Part",
    "Proxy",
    "Queue",
    "RequestRefused",
    "Site",
    "Source",
    "binding",
    "check_request",
    "cpu_list",
    "image_arch",
    "job_spec",
    "lint_script",
    "list_sites",
    "load_site",
    "overrides_path",
    "with_deployed_image",
    "parse_walltime",
]
