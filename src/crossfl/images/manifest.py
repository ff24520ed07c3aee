"""build/images/manifest.json: the sha256 and labels of every built image, one entry per
arch, replaced atomically under a lock."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from crossfl.atomic import atomic_write_bytes
from crossfl.hashing import sha256_file
from crossfl.images.layout import manifest_path
from crossfl.schema import user_error


def image_digest(path: str | Path) -> str:
    """`sha256:<hex>` of an image file."""
    return "sha256:" + sha256_file(path)


class ManifestEntry(BaseModel):
    arch: str
    image: str
    digest: str
    size_bytes: int
    built_at: str
    git_commit: str
    signed: bool = False
    labels: dict[str, str] = Field(default_factory=dict)


class Manifest(BaseModel):
    schema_version: Literal[1] = 1
    images: dict[str, ManifestEntry] = Field(default_factory=dict)


def read_manifest(path: Path | None = None) -> dict:
    """build/images/manifest.json as plain data: {"schema_version": 1, "images": {ARCH: {...,
    "digest": "sha256:...", "labels": {...}}}}; empty images when nothing was built yet."""
    return _load_manifest(path or manifest_path()).model_dump()


def _load_manifest(path: Path) -> Manifest:
    if not path.exists():
        return Manifest()
    try:
        return Manifest.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise user_error(
            exc,
            file=path,
            what="not a crossfl image manifest",
            fix="delete it and rebuild the images",
        ) from None


@contextmanager
def _manifest_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def record_image(entry: ManifestEntry, path: Path | None = None) -> None:
    """Set one arch's entry, keeping the others; the file is replaced atomically."""
    path = path or manifest_path()
    with _manifest_lock(path):
        manifest = _load_manifest(path)
        manifest.images[entry.arch] = entry
        atomic_write_bytes(path, (manifest.model_dump_json(indent=2) + "\n").encode())
