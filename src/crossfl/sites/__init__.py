"""The facility catalog: `deploy/sites/*.yaml`, one pydantic schema (schema.py), the rules
that span fields (rules.py), loading with the user's overrides and `${VAR}`s (loading.py).

What differs per user (account, paths) comes from an overrides file
(`deploy/sites/overrides/<site>.yaml`, or `$CROSSFL_SITE_OVERRIDES/<site>.yaml`), deep-merged
over the catalog entry, and from `${VAR}` / `${VAR:-default}` references expanded from the
environment when the file is loaded. A bare `$VAR` is left alone: it belongs to the shell on
the facility (e.g. `$HOME`, `$PBS_NODEFILE`). Every mistake becomes one `UserError` naming
the file, the field and the fix.
"""

from crossfl.schedulers import parse_walltime
from crossfl.sites.loading import list_sites, load_site, overrides_path
from crossfl.sites.rules import lint_script
from crossfl.sites.schema import (
                                  VISIBLE_DEVICES_ENV,
                                  Accelerator,
                                  Container,
                                  Deploy,
                                  Endpoint,
                                  ImageBuild,
                                  ImageSource,
                                  Launcher,
                                  Proxy,
                                  Queue,
                                  Site,
                                  image_arch,
)

__all__ = ["VISIBLE_DEVICES_ENV", "Accelerator", "Container", "Deploy", "Endpoint", "ImageBuild",
           "ImageSource", "Launcher", "Proxy", "Queue", "Site", "image_arch", "lint_script",
           "list_sites", "load_site", "overrides_path", "parse_walltime"]
