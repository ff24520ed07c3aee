"""One SSH connection to a site's login host (fabric), with `--dry-run` built in.

The connection honours the user's OpenSSH client configuration (`~/.ssh/config`, or the file
named by $CROSSFL_SSH_CONFIG): HostName, User, Port, IdentityFile, ProxyJump/ProxyCommand.
A whole `crossfl` command uses one connection, so a user of a one-time-password facility
authenticates once per command. Every failure to connect becomes one `UserError` naming the
site, the host and the next step.
"""

from __future__ import annotations

import os
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import paramiko
from fabric import Config, Connection
from invoke.exceptions import CommandTimedOut
from rich.console import Console

from crossfl.errors import UserError

SSH_CONFIG_ENV = "CROSSFL_SSH_CONFIG"
CONNECT_TIMEOUT_S = 20


@dataclass(frozen=True)
class Target:
    site: str
    host: str
    user: str | None = None
    port: int | None = None
    activate: str | None = None  # shell line putting globus-compute-endpoint on PATH
    site_file: str | None = None

    @property
    def label(self) -> str:
        who = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{who}{self.host}{port}"


@dataclass(frozen=True)
class Result:
    stdout: str
    stderr: str
    rc: int

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def markers(self, prefix: str = "CROSSFL_") -> dict[str, str]:
        """`KEY=value` lines the script printed with `echo CROSSFL_KEY=...`."""
        out: dict[str, str] = {}
        for line in self.stdout.splitlines():
            if line.startswith(prefix) and "=" in line:
                key, _, value = line.partition("=")
                out[key.removeprefix(prefix)] = value
        return out

    def tail(self, lines: int = 1) -> str:
        text = "\n".join(t for t in (self.stdout.strip(), self.stderr.strip()) if t)
        kept = [ln.strip() for ln in text.splitlines() if ln.strip()]
        return " | ".join(kept[-lines:]) if kept else f"exit status {self.rc}"


def fabric_config() -> Config:
    path = os.environ.get(SSH_CONFIG_ENV)
    if path:
        if not Path(path).is_file():
            raise UserError(f"${SSH_CONFIG_ENV} names no file", file=path,
                            fix=f"point {SSH_CONFIG_ENV} at an OpenSSH client config, or unset it")
        return Config(runtime_ssh_path=path)
    return Config()  # loads ~/.ssh/config and /etc/ssh/ssh_config


def _connect_error(exc: BaseException, t: Target) -> UserError:
    where = f"site {t.site}: cannot open SSH to {t.label}"
    ssh_hint = f"check deploy.host/user/port in {t.site_file or 'the site file'} and that `ssh {t.host}` works"
    if isinstance(exc, paramiko.AuthenticationException) or (
            isinstance(exc, paramiko.SSHException) and "authentication" in str(exc).lower()):
        return UserError(f"{where}: the server refused the key ({exc})",
                         fix=f"add your public key at the facility, or set IdentityFile for "
                             f"{t.host} in ~/.ssh/config; {ssh_hint}")
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return UserError(f"{where}: connection refused (nothing listens on the port)",
                         fix=ssh_hint)
    if isinstance(exc, socket.gaierror):
        return UserError(f"{where}: unknown host ({exc.strerror})", fix=ssh_hint)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return UserError(f"{where}: timed out after {CONNECT_TIMEOUT_S}s",
                         fix=f"check VPN/firewall and ProxyJump; {ssh_hint}")
    if isinstance(exc, paramiko.ssh_exception.ProxyCommandFailure):
        return UserError(f"{where}: ProxyCommand/ProxyJump failed ({exc})", fix=ssh_hint)
    text = str(exc).strip() or type(exc).__name__
    return UserError(f"{where}: {text}", fix=ssh_hint)


class Remote:
    """Runs shell snippets and moves files on a login node; in dry-run, only prints them."""

    def __init__(self, target: Target, *, dry_run: bool = False,
                 console: Console | None = None) -> None:
        self.t = target
        self.dry_run = dry_run
        self.console = console or Console(stderr=True, soft_wrap=True)
        self._conn: Connection | None = None
        self._sftp: paramiko.SFTPClient | None = None

    # -- connection ------------------------------------------------------------------------
    def __enter__(self) -> Remote:
        if self.dry_run:
            self.say(f"would connect over SSH to {self.t.label}")
            return self
        conn = Connection(self.t.host, user=self.t.user, port=self.t.port,
                          config=fabric_config(), connect_timeout=CONNECT_TIMEOUT_S)
        try:
            conn.open()
        except Exception as exc:  # noqa: BLE001 - every failure here becomes one line
            conn.close()
            raise _connect_error(exc, self.t) from None
        self._conn = conn
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def conn(self) -> Connection:
        if self._conn is None:
            raise RuntimeError("Remote used outside `with` or in dry-run")
        return self._conn

    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._sftp = self.conn.sftp()
        return self._sftp

    # -- output ----------------------------------------------------------------------------
    def say(self, text: str) -> None:
        prefix = "[dim]\\[dry-run][/] " if self.dry_run else ""
        self.console.print(f"{prefix}{text}", highlight=False, soft_wrap=True)

    # -- commands --------------------------------------------------------------------------
    def command_line(self, script: str, *, activate: bool = False) -> str:
        if activate and self.t.activate:
            script = f"{{ {self.t.activate} ; }} || {{ echo CROSSFL_ACTIVATE_FAILED=1; exit 97; }}\n{script}"
        return "bash -lc " + shlex.quote(script)

    def run(self, script: str, *, activate: bool = False, timeout: int | None = 120,
            label: str | None = None, dry_result: Result | None = None) -> Result:
        """Run `script` with bash on the login node; never raises on a non-zero exit.
        Dry-run prints the command; a real run prints `label`, if any."""
        if self.dry_run:
            shown = script if not (activate and self.t.activate) else f"{self.t.activate} ; {script}"
            self.say(f"[cyan]{self.t.label}$[/] {_one_line(shown)}")
        elif label:
            self.say(label)
        if self.dry_run:
            return dry_result or Result("", "", 0)
        try:
            r = self.conn.run(self.command_line(script, activate=activate), hide=True,
                              warn=True, in_stream=False, timeout=timeout)
        except CommandTimedOut:
            raise UserError(f"site {self.t.site}: `{_one_line(script)[:80]}` on {self.t.label} "
                            f"did not finish within {timeout}s",
                            fix="check the login node's load, then run the command again") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise _connect_error(exc, self.t) from None
        return Result(r.stdout, r.stderr, int(r.exited if r.exited is not None else -1))

    def transfer_note(self, local: Path | str, remote: str, size: int, extra: str = "") -> None:
        self.say(f"upload {local} -> {self.t.label}:{remote} ({size:,} bytes{extra})")


def _one_line(script: str) -> str:
    return " ; ".join(ln.strip() for ln in script.strip().splitlines() if ln.strip())


def q(path: str) -> str:
    """Quote a remote path for bash, keeping a leading `$HOME`/`~` expandable."""
    if path.startswith("~/"):
        path = "$HOME/" + path[2:]
    if path.startswith("$"):
        head, sep, rest = path.partition("/")
        return f'"{head}"{sep}{shlex.quote(rest) if rest else ""}' if sep else f'"{head}"'
    return shlex.quote(path)

