"""What an image build needs from the machine it runs on: the host settings that reach %post
as build arguments (facility proxies, pip's index), and the hosts each arch's build must reach.

`apptainer build` runs %post in a clean environment: "Environment variables from the host are
not passed into the build. To pass values into a build you should use the templating /
build-args support" (Apptainer user docs, definition_files.rst, %post; build_env.rst). So the
def declares one build argument per setting (default "none": unset) and %post exports it under
the names the tools read (pip and curl read the lower-case proxy names, uv the upper-case).
podman passes the proxy variables into RUN by itself (podman-build --http-proxy, default true).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlparse

from crossfl.images.arches import ArchSpec

UNSET = "none"  # a build argument's default: Apptainer refuses empty values ("missing value")


@dataclass(frozen=True)
class BuildSetting:
    name: str  # the build argument
    exports: tuple[str, ...]  # the variables %post sets from it

    @property
    def placeholder(self) -> str:
        return "{{ %s }}" % self.name


BUILD_SETTINGS = (
    BuildSetting("HTTP_PROXY", ("HTTP_PROXY", "http_proxy")),
    BuildSetting("HTTPS_PROXY", ("HTTPS_PROXY", "https_proxy")),
    BuildSetting("NO_PROXY", ("NO_PROXY", "no_proxy")),
    BuildSetting("PIP_INDEX_URL", ("PIP_INDEX_URL",)),
    BuildSetting("PIP_FIND_LINKS", ("PIP_FIND_LINKS",)),
    BuildSetting("PIP_CERT", ("PIP_CERT",)),  # a TLS-inspecting proxy's CA bundle
    BuildSetting("PIP_RETRIES", ("PIP_RETRIES",)),
    BuildSetting("UV_PYTHON_INSTALL_MIRROR", ("UV_PYTHON_INSTALL_MIRROR",)),
)


def build_arg_values(environ: Mapping[str, str]) -> dict[str, str]:
    """The build arguments for the settings set in `environ` (either case of a variable)."""
    out: dict[str, str] = {}
    for setting in BUILD_SETTINGS:
        for var in (setting.name, *setting.exports):
            value = environ.get(var, "").strip()
            if value:
                out[setting.name] = value
                break
    return out


PYPI_HOSTS = ("pypi.org", "files.pythonhosted.org")


def registry_host(image: str) -> str:
    """The registry an image reference is pulled from (Docker's rule: a first path component
    with a dot or colon, or `localhost`, is a registry; otherwise Docker Hub)."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def build_hosts(spec: ArchSpec) -> list[str]:
    """Every host the arch's build reaches, in the order it reaches them."""
    hosts: list[str] = []
    if spec.bootstrap == "debootstrap":
        hosts.append(urlparse(spec.mirror or "").hostname or "")
    else:
        hosts.append(registry_host(spec.base))
    if spec.python.source == "uv":
        hosts += [
            "ghcr.io (uv's image: its uv binary)",
            "releases.astral.sh (CPython build; github.com if unreachable)",
            "github.com (CPython build, if releases.astral.sh is unreachable)",
        ]
    hosts.append(urlparse(spec.torch.index_url).hostname or "")
    hosts += list(PYPI_HOSTS)
    return hosts


def host_names(spec: ArchSpec) -> list[str]:
    """The bare host names of build_hosts."""
    return list(dict.fromkeys(h.split(" ", 1)[0] for h in build_hosts(spec)))
