"""What upstream publishes (containers/published.yaml): torch builds per version and local tag,
base images and Debian releases, each with its source and the day it was checked. Every arch
must pick its pins from this table."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydantic import Field, ValidationError

from crossfl import paths
from crossfl.errors import UserError
from crossfl.images.arches import ARCHES_FILE, ArchSpec
from crossfl.schema import StrictModel, user_error
from crossfl.yamlio import load_yaml

PUBLISHED_FILE = "published.yaml"


class Evidence(StrictModel):
    source: str = Field(min_length=10)
    checked: dt.date


class TorchBuild(Evidence):
    index_url: str = Field(pattern=r"^https://\S+$")


class TorchRelease(StrictModel):
    python: str
    python_source: str
    published: dict[str, TorchBuild]
    not_published: dict[str, Evidence] = Field(default_factory=dict)


class BaseImage(Evidence):
    registry: str


class Distribution(Evidence):
    mirror: str
    python: str


class Published(StrictModel):
    schema_version: int
    torch: dict[str, TorchRelease]
    base_images: dict[str, BaseImage]
    distributions: dict[str, Distribution] = Field(default_factory=dict)


def load_published(path: Path | None = None) -> Published:
    path = path or paths.containers_dir() / PUBLISHED_FILE
    try:
        return Published.model_validate(load_yaml(path))
    except ValidationError as exc:
        raise user_error(exc, file=path, schema="src/crossfl/images/published.py") from None


def pin_problems(
    name: str, spec: ArchSpec, torch_version: str, table: Published | None = None
) -> list[str]:
    """Why arch `name` (torch `torch_version` + its local tag, its base) is not a published
    combination; empty when it is."""
    table = table or load_published()
    problems: list[str] = []
    release = table.torch.get(torch_version)
    local = spec.torch.local
    if release is None:
        problems.append(
            f"torch {torch_version} has no block in {PUBLISHED_FILE}: add what it "
            "publishes (with sources) before pinning it"
        )
    elif local in release.not_published:
        problems.append(
            f"torch {torch_version}+{local} is not published "
            f"({release.not_published[local].source}); published: "
            f"{', '.join(sorted(release.published))}"
        )
    elif local not in release.published:
        problems.append(
            f"torch {torch_version}+{local} is not listed as published; "
            f"published: {', '.join(sorted(release.published))}"
        )
    elif release.published[local].index_url != spec.torch.index_url:
        problems.append(
            f"torch +{local} comes from {release.published[local].index_url}, not "
            f"{spec.torch.index_url}"
        )
    if spec.stack_version and not local.replace("cu", "").replace("rocm", "").replace(
        ".", ""
    ).startswith(spec.stack_version.replace(".", "")):
        problems.append(f"stack_version {spec.stack_version} does not match the tag +{local}")
    if spec.bootstrap == "docker" and spec.base not in table.base_images:
        problems.append(f"base image {spec.base} is not listed in {PUBLISHED_FILE}")
    if spec.bootstrap == "debootstrap":
        release_info = table.distributions.get(spec.base)
        if release_info is None:
            problems.append(f"Debian release {spec.base} is not listed in {PUBLISHED_FILE}")
        elif release_info.mirror != spec.mirror:
            problems.append(f"mirror {spec.mirror} is not {release_info.mirror}")
    return problems


def check_pins(name: str, spec: ArchSpec, torch_version: str) -> None:
    """One UserError naming arches.yaml, the arch and the fix when a pin is not published."""
    problems = pin_problems(name, spec, torch_version)
    if problems:
        raise UserError(
            "; ".join(problems),
            file=paths.containers_dir() / ARCHES_FILE,
            field=f"arches.{name}",
            fix=f"pick a build and base that {PUBLISHED_FILE} lists as published",
        )
