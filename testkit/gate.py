"""A site's data file that is a named pipe, so a test knows when a task is mid-round.

A task opens its data file to read it; on a FIFO that open waits for a writer. The gate serves
each reader the file's content once (and waits for it to close the file before it serves the
next), and on ``hold()`` stops serving: the next task
to open the file then waits there, in the middle of its round, until the test has done what it
needed (sent a signal, killed the server) and calls ``release()``. Nothing depends on timing:
every wait is for a state (a reader present, a process gone), polled, with a safety limit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path


class GateTimeout(AssertionError):
    """A state the test waited for did not come within the (generous) safety limit."""


def wait_for(
    what: str,
    check: Callable[[], bool],
    limit_s: float = 300.0,
    alive: Callable[[], bool] = lambda: True,
) -> None:
    """Poll ``check`` until it holds; fail after ``limit_s`` or when ``alive`` turns false."""
    deadline = time.monotonic() + limit_s
    while not check():
        if not alive():
            raise GateTimeout(f"gave up waiting for {what}: the process it needs ended")
        if time.monotonic() > deadline:
            raise GateTimeout(f"{what} did not happen within {limit_s:.0f} s")
        time.sleep(0.1)


class FifoGate:
    def __init__(self, path: Path, content: bytes, serve: int | None = None) -> None:
        """``serve``: hold after serving that many readers (None: serve every reader)."""
        self.path, self.content, self.limit = path, content, serve
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path)
        self.served = 0
        self._draining = (
            False  # served a reader that may still be reading: serve none until it is gone
        )
        self._stop = threading.Event()
        self._lock = (
            threading.Lock()
        )  # one writer at a time: the feeder, or the test holding a reader
        self._thread = threading.Thread(target=self._feed, name=f"gate {path.name}", daemon=True)
        self._thread.start()

    def _open_writer(self) -> int | None:
        """A write end if a reader has the FIFO open now, else None (never blocks)."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no reader yet
                return None
            raise
        os.set_blocking(fd, True)
        return fd

    def _feed(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self._draining:  # each reader gets the content once, whatever it reads in
                    fd = self._open_writer()
                    if fd is None:
                        self._draining = False
                    else:
                        os.close(fd)
                elif not self.held and (fd := self._open_writer()) is not None:
                    self._serve(fd)
            time.sleep(0.05)

    @property
    def held(self) -> bool:
        return self.limit is not None and self.served >= self.limit

    def hold(self) -> None:
        """Serve no more readers: the next task to open the file waits in its round."""
        with self._lock:
            self.limit = self.served

    def wait_for_reader(self, alive: Callable[[], bool], limit_s: float = 300.0) -> int:
        """Block until a task has opened the held file; it then waits on a read. Returns the
        write end (keep it open: the task stays blocked until ``release``)."""
        assert self.limit is not None, "hold() first, or give serve="
        found: list[int] = []

        def reader_present() -> bool:
            with self._lock:
                fd = self._open_writer()
            if fd is not None:
                found.append(fd)
            return bool(found)

        wait_for(
            f"a task reading {self.path.name}",
            lambda: self.held and not self._draining and reader_present(),
            limit_s,
            alive,
        )
        return found[0]

    def _serve(self, fd: int) -> None:
        with contextlib.suppress(BrokenPipeError):  # the reader died mid-read (or was killed)
            view = memoryview(self.content)
            while view:
                view = view[os.write(fd, view) :]
        os.close(fd)
        self.served += 1
        self._draining = True

    def release(self, fd: int | None = None) -> None:
        """Serve the reader held by ``wait_for_reader`` (if it is still there), then every
        later one."""
        with self._lock:
            if fd is not None:
                self._serve(fd)
            self.limit = None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.path.unlink(missing_ok=True)
