"""Apptainer definition files read as Apptainer reads them: stages, header keywords,
%sections, build arguments, labels and %files."""

from __future__ import annotations

import re
import shlex

from pydantic import BaseModel

SECTIONS = frozenset(
    {
        "arguments",
        "setup",
        "files",
        "post",
        "environment",
        "runscript",
        "startscript",
        "test",
        "labels",
        "help",
    }
)


class Section(BaseModel):
    name: str
    args: str = ""
    body: str = ""


class Stage(BaseModel):
    header: dict[str, str]
    sections: dict[str, Section]


class DefFile(BaseModel):
    stages: list[Stage]

    def only_stage(self) -> Stage:
        if len(self.stages) != 1:
            raise ValueError(f"{len(self.stages)} stages, expected one")
        return self.stages[0]

    def final_stage(self) -> Stage:
        """The stage the image is (the last); earlier ones only lend it files."""
        return self.stages[-1]


_SECTION = re.compile(r"^%([A-Za-z]+)(?:[ \t]+(.*))?$")
_HEADER = re.compile(r"^([A-Za-z][A-Za-z0-9]*):[ \t]*(.*)$")


def parse_def(text: str) -> DefFile:
    """Split an Apptainer definition file into stages (each begins with `Bootstrap:`), their
    header keywords and their %sections, as Apptainer's own parser reads them. Raises ValueError
    naming the line for what Apptainer would refuse."""
    stages: list[Stage] = []
    section: Section | None = None
    body: list[str] = []

    def close() -> None:
        if section is not None:
            section.body = "\n".join(body).strip("\n") + "\n" if any(body) else ""

    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        new_stage = section or not stages or "bootstrap" in stages[-1].header
        if header and header.group(1).lower() == "bootstrap" and new_stage:
            close()
            section, body = None, []
            stages.append(Stage(header={}, sections={}))
        match = _SECTION.match(line)
        if match and match.group(1).lower() not in SECTIONS:
            raise ValueError(f"line {number}: unknown section %{match.group(1)}")
        if match:
            if not stages:
                raise ValueError(f"line {number}: %{match.group(1)} before any Bootstrap:")
            close()
            name = match.group(1).lower()
            args = (match.group(2) or "").strip()
            # `%files from STAGE` is its own section beside a stage's plain %files
            key = f"files {args}" if name == "files" and args.startswith("from ") else name
            if key in stages[-1].sections:
                raise ValueError(f"line {number}: a second %{key} in one stage")
            section, body = Section(name=name, args=args), []
            stages[-1].sections[key] = section
            continue
        if section is not None:
            body.append(line)
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not header:
            raise ValueError(f"line {number}: not a `Keyword: value` header: {line!r}")
        if not stages:
            raise ValueError(f"line {number}: the file must begin with Bootstrap:")
        stages[-1].header[header.group(1).lower()] = header.group(2).strip()
    close()
    if not stages:
        raise ValueError("no Bootstrap: header")
    for index, stage in enumerate(stages, 1):
        agent = stage.header.get("bootstrap")
        if agent in {"docker", "localimage", "oras", "library"} and not stage.header.get("from"):
            raise ValueError(f"stage {index}: Bootstrap {agent} needs From:")
        if agent == "debootstrap":
            for key, name in (("osversion", "OSVersion"), ("mirrorurl", "MirrorURL")):
                if not stage.header.get(key):
                    raise ValueError(f"stage {index}: Bootstrap debootstrap needs {name}:")
    return DefFile(stages=stages)


def build_args(stage: Stage) -> dict[str, str]:
    """%arguments defaults (KEY=VALUE lines; Apptainer refuses an empty key or value)."""
    section = stage.sections.get("arguments")
    out: dict[str, str] = {}
    for line in (section.body if section else "").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise ValueError(f"%arguments: {line!r} is not KEY=VALUE with both parts")
            out[key.strip()] = value.strip()
    return out


def apply_build_args(text: str, overrides: dict[str, str] | None = None) -> str:
    """Replace `{{ KEY }}` the way `apptainer build --build-arg KEY=...` does (comment lines
    are left alone, as Apptainer leaves them)."""
    values = {**build_args(parse_def(text).stages[-1]), **(overrides or {})}

    def sub(match: re.Match[str]) -> str:
        if match.group(1) not in values:
            raise ValueError(f"build argument {match.group(1)} has no value")
        return values[match.group(1)]

    return "".join(
        line if line.lstrip().startswith("#") else _BUILD_ARG.sub(sub, line)
        for line in text.splitlines(keepends=True)
    )


_BUILD_ARG = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def labels(stage: Stage) -> dict[str, str]:
    section = stage.sections.get("labels")
    out = {}
    for line in (section.body if section else "").splitlines():
        if line.strip():
            key, _, value = line.strip().partition(" ")
            out[key] = value.strip()
    return out


def files(stage: Stage) -> list[tuple[str, str]]:
    section = stage.sections.get("files")
    pairs = []
    for line in (section.body if section else "").splitlines():
        parts = shlex.split(line, comments=True)
        if parts:
            pairs.append((parts[0], parts[1] if len(parts) > 1 else parts[0]))
    return pairs
