"""The per-accelerator table, containers/arches.yaml: base image (or Debian release), where
Python comes from, the torch channel, the vendor stack and its environment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, ValidationError, model_validator

from crossfl import paths
from crossfl.errors import UserError
from crossfl.schema import StrictModel, user_error
from crossfl.yamlio import load_yaml

ARCHES_FILE = "arches.yaml"


EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Z_][A-Z0-9_]*$")]
# Literal values: they are written inside double quotes (%environment, ENV), so no expansion.
EnvValue = Annotated[str, StringConstraints(pattern=r'^[^"`\\$\n]*$')]
Host = Annotated[str, StringConstraints(pattern=r"^[a-z0-9.-]+$")]
ArchName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]*$")]


class PythonSource(StrictModel):
    source: Literal["base", "uv"]
    path: str = ""

    @model_validator(mode="after")
    def _base_needs_path(self) -> PythonSource:
        if self.source == "base" and not self.path.startswith("/"):
            raise ValueError("source 'base' needs the interpreter's absolute path in `path`")
        return self


class TorchChannel(StrictModel):
    local: str = Field(pattern=r"^[a-z0-9.]+$", description="local version tag, e.g. cu128")
    index_url: str = Field(pattern=r"^https://\S+$")


class ArchSpec(StrictModel):
    description: str
    # docker: `base` is an image reference. debootstrap: `base` is the Debian release
    # (Apptainer's OSVersion), fetched from `mirror` with the `include` packages added.
    bootstrap: Literal["docker", "debootstrap"]
    base: str = Field(pattern=r"^\S+$")
    mirror: str | None = Field(default=None, pattern=r"^https?://\S+$")
    include: list[str] = Field(default_factory=list)
    python: PythonSource
    torch: TorchChannel
    stack: Literal["cpu", "cuda", "rocm", "xpu"]
    stack_version: str | None = None
    env: dict[EnvName, EnvValue] = Field(default_factory=dict)
    # Where `apt-get install curl` goes when a uv arch's base image has no curl.
    apt_hosts: list[Host] = Field(default_factory=list)

    @model_validator(mode="after")
    def _bootstrap_fields(self) -> ArchSpec:
        if self.bootstrap == "debootstrap":
            if not self.mirror:
                raise ValueError("bootstrap debootstrap needs `mirror` (Apptainer's MirrorURL)")
            if self.python.source != "base":
                raise ValueError(
                    "bootstrap debootstrap takes Python from the release: "
                    "python.source must be base"
                )
        elif self.mirror or self.include:
            raise ValueError("`mirror` and `include` are for bootstrap debootstrap only")
        return self


class ArchTable(StrictModel):
    python_version: str = Field(pattern=r"^\d+\.\d+\.\d+$")
    uv_version: str = Field(pattern=r"^\d+\.\d+\.\d+$")
    arches: dict[ArchName, ArchSpec]


def load_arches(path: Path | None = None) -> ArchTable:
    path = path or paths.containers_dir() / ARCHES_FILE
    try:
        return ArchTable.model_validate(load_yaml(path))
    except ValidationError as exc:
        raise user_error(exc, file=path, schema="src/crossfl/images/arches.py") from None


def arch_names() -> list[str]:
    return sorted(load_arches().arches)


def get_arch(name: str, table: ArchTable | None = None) -> ArchSpec:
    table = table or load_arches()
    if name not in table.arches:
        raise UserError(
            f"unknown ARCH {name!r}; allowed: {', '.join(sorted(table.arches))}", field="ARCH"
        )
    return table.arches[name]
