"""Reuse a training result whose inputs are identical.

Training in a replay is real (the tiny model on this machine), and deterministic for
a given task: the client seeds everything from (seed, round) and sets the adapter from
the task's bytes. Many seeds and dispatch policies send the same task again (the same
global adapter, round and local steps), so its result is kept, keyed by a digest of the
function and the payload (adapter bytes included) and of the files the payload names
(model and data: size and modification time).

Tasks that move adapters by reference (``adapter_path`` / ``result_path``) are not
cached: their result names a file of the run that made it.

Every key also holds ``code_version()``: the cache format (``CACHE_VERSION``), a digest of
the client package's source (the code that trains and evaluates) and the versions of the
libraries it trains with. A result made by other code is never reused.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from crossfl.atomic import atomic_write_bytes

BY_REFERENCE = ("adapter_path", "result_path")
PATH_KEYS = ("model_path", "data_path")
CACHE_VERSION = 2  # raise when what a kept result means changes
LIBRARIES = ("torch", "transformers", "peft", "safetensors", "tokenizers", "numpy")


@functools.cache
def code_version() -> str:
    """The cache format, the client package's source and the training libraries' versions."""
    import crossfl.client

    h = hashlib.sha256(b"crossfl-simulate-cache:%d;" % CACHE_VERSION)
    root = Path(crossfl.client.__file__).parent
    for file in sorted(root.rglob("*.py")):
        _feed(h, [str(file.relative_to(root)), file.read_bytes()])
    for lib in LIBRARIES:
        try:
            _feed(h, [lib, metadata.version(lib)])
        except metadata.PackageNotFoundError:
            _feed(h, [lib, None])
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    """A canonical, typed encoding of plain data (dict key order does not matter)."""
    if obj is None:
        h.update(b"N")
    elif isinstance(obj, bool):
        h.update(b"T" if obj else b"F")
    elif isinstance(obj, int):
        h.update(b"I%d;" % obj)
    elif isinstance(obj, float):
        h.update(b"D" + repr(obj).encode() + b";")
    elif isinstance(obj, str):
        data = obj.encode()
        h.update(b"S%d:" % len(data) + data)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        h.update(b"B%d:" % len(data) + data)
    elif isinstance(obj, dict):
        h.update(b"{%d" % len(obj))
        for key in sorted(obj, key=str):
            _feed(h, str(key))
            _feed(h, obj[key])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[%d" % len(obj))
        for item in obj:
            _feed(h, item)
        h.update(b"]")
    else:
        raise TypeError(f"cannot digest a {type(obj).__name__} in a task payload")


def file_facts(path: str) -> list[tuple[str, int, int]]:
    """(relative name, size, mtime_ns) of a file, or of every file under a directory."""
    p = Path(path)
    if p.is_file():
        st = p.stat()
        return [(p.name, st.st_size, st.st_mtime_ns)]
    facts = []
    if p.is_dir():
        for root, _dirs, files in os.walk(p):
            for name in files:
                f = Path(root) / name
                st = f.stat()
                facts.append((str(f.relative_to(p)), st.st_size, st.st_mtime_ns))
    return sorted(facts)


# What a replay runs: the round server, strategies and dispatch policy, the clock, and the
# simulator's own modules (not the comparison that asks for replays: its jobs name all a
# replay is given, and jobs.COMPARE_VERSION covers how it reads them; not calibration).
REPLAY_MODULES = (
    "server",
    "clock.py",
    *(
        f"simulate/{m}.py"
        for m in (
            "cache",
            "executor",
            "pilot",
            "queues",
            "replay",
            "scenario",
        )
    ),
)


@functools.cache
def replay_version() -> str:
    """The training's version (``code_version``) and the source of ``REPLAY_MODULES``."""
    import crossfl

    h = hashlib.sha256(code_version().encode())
    root = Path(crossfl.__file__).parent
    files: list[Path] = []
    for part in REPLAY_MODULES:
        path = root / part
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    for file in files:
        _feed(h, [str(file.relative_to(root)), file.read_bytes()])
    return h.hexdigest()


def payload_digest(fn: Callable[..., Any], payload: Any) -> str | None:
    """The cache key of ``fn(payload)``, or None when it must not be cached."""
    if not isinstance(payload, dict) or any(payload.get(k) is not None for k in BY_REFERENCE):
        return None
    h = hashlib.sha256()
    _feed(h, code_version())
    _feed(h, f"{fn.__module__}:{fn.__qualname__}")
    _feed(h, payload)
    for key in PATH_KEYS:
        if isinstance(payload.get(key), str):
            _feed(h, [list(f) for f in file_facts(payload[key])])
    return h.hexdigest()


@dataclass
class CallOutcome:
    """What the real function did: its result or its error, and whether it was reused."""

    result: dict[str, Any] | None
    error: BaseException | None
    reused: bool


class ResultCache:
    """In memory, and on disk under ``directory`` when given (shared by runs)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self._memory: dict[str, dict[str, Any]] = {}
        self.hits = 0
        self.misses = 0

    def _file(self, key: str) -> Path | None:
        return None if self.directory is None else self.directory / f"{key}.pkl"

    def _load(self, key: str) -> dict[str, Any] | None:
        if key in self._memory:
            return self._memory[key]
        file = self._file(key)
        if file is not None and file.is_file():
            self._memory[key] = pickle.loads(file.read_bytes())  # our own files only
            return self._memory[key]
        return None

    def run(self, fn: Callable[..., Any], payload: Any) -> CallOutcome:
        """``fn(payload)``, or the kept result of the identical call. Errors are not kept."""
        key = payload_digest(fn, payload)
        kept = self._load(key) if key is not None else None
        if kept is not None:
            self.hits += 1
            return CallOutcome(copy.deepcopy(kept), None, True)
        self.misses += 1
        try:
            result = fn(payload)
        except Exception as exc:  # the site's failure, reported on the task's future
            return CallOutcome(None, exc, False)
        if key is not None and isinstance(result, dict):
            self._memory[key] = copy.deepcopy(result)
            file = self._file(key)
            if file is not None:
                atomic_write_bytes(file, pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
        return CallOutcome(result, None, False)
