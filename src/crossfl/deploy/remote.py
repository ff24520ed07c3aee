"""One SSH connection to a site's login host, with `--dry-run` built in.

Two channels (Parsl's word for a connection to a login node), same operations (run a bash
snippet, write a file, append to a file from an offset):
- fabric/paramiko (default): honours the user's OpenSSH client configuration (`~/.ssh/config`,
  or the file named by $CROSSFL_SSH_CONFIG): HostName, User, Port, IdentityFile,
  ProxyJump/ProxyCommand. One connection per `crossfl` command.
- the system `ssh` through an OpenSSH ControlMaster: paramiko cannot join a master's socket,
  so when `ssh -O check HOST` finds a running master (ControlMaster/ControlPath/ControlPersist
  in ~/.ssh/config), every command and upload goes through it. On facilities with one-time
  passwords the user authenticates once (`ssh -fN HOST`) and deploy, status, logs and stop
  reuse that login. $CROSSFL_SSH_CHANNEL=fabric|openssh|auto (default auto) forces a choice.
Every failure to connect becomes one `UserError` naming the site, the host and the next step.

The login node is who it says it is: its host key must be in the user's known_hosts (the files
~/.ssh/config's UserKnownHostsFile names, else ~/.ssh/known_hosts, and the system's), for the
login host and every ProxyJump hop; an unknown or changed key stops the command in one line
saying how to accept it (paramiko's RejectPolicy; `ssh -o StrictHostKeyChecking=yes`).

A script runs as `bash -l -s` with its text on stdin, never in the command line, where any
user of a shared login node could read it (`ps`); the activate line and whatever it exports
travel the same way. What deploy prints of a script is redacted (crossfl.redact).
Endpoint operations go to the login node the endpoint was started on (`Remote.pin_to`): from
the node the connection reached, `ssh ... HOST bash -l -s` with the script on that ssh's stdin
(a quoted here-document inside the script sent over stdin), so it is in no command line on
either node.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, BinaryIO, Protocol

import paramiko
from fabric import Config, Connection
from invoke.exceptions import CommandTimedOut
from rich.console import Console

from crossfl.errors import UserError
from crossfl.quoting import quote
from crossfl.redact import redact

SSH_CONFIG_ENV = "CROSSFL_SSH_CONFIG"
CHANNEL_ENV = "CROSSFL_SSH_CHANNEL"
CONNECT_TIMEOUT_S = 20
CHUNK = 1 << 20
# What the login node's sshd runs: a login shell reading the script from stdin.
REMOTE_SHELL = "bash -l -s"
DEFAULT_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
# How a command reaches another login node of the same facility (login nodes trust each other
# for SSH at OLCF, ALCF and NERSC); a site may name another line (deploy.login_hop). It is
# followed by the host and REMOTE_SHELL, the script on its stdin; the host key is verified
# there too (the facility's known_hosts lists its login nodes).
HOP_SSH = f"ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout={CONNECT_TIMEOUT_S}"
LANDED = "hostname -f 2>/dev/null || hostname"


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
class CommandResult:
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


class Channel(Protocol):
    name: str

    def run(self, script: str, timeout: int | None) -> CommandResult:
        """Run `script` with REMOTE_SHELL, the text on its stdin."""
        ...

    def write(self, path: str, data: bytes, mode: int) -> None: ...
    def append(
        self, src: BinaryIO, path: str, offset: int, progress: Callable[[int], None]
    ) -> None: ...
    def close(self) -> None: ...


def ssh_config_path() -> str | None:
    path = os.environ.get(SSH_CONFIG_ENV)
    if path and not Path(path).is_file():
        raise UserError(
            f"${SSH_CONFIG_ENV} names no file",
            file=path,
            fix=f"point {SSH_CONFIG_ENV} at an OpenSSH client config, or unset it",
        )
    return path or None


def known_hosts_files(ssh_config: dict) -> list[str]:
    """The known_hosts files OpenSSH would read for a host: UserKnownHostsFile (else
    ~/.ssh/known_hosts{,2}) and GlobalKnownHostsFile (else /etc/ssh/ssh_known_hosts{,2})."""
    home = os.path.expanduser("~")
    user = ssh_config.get("user") or os.environ.get("USER", "")

    def paths(value: str | None, default: tuple[str, ...]) -> list[str]:
        words = value.split() if value else list(default)
        out = []
        for w in words:
            w = w.replace("%d", home).replace("%u", user).replace("%%", "%")
            out.append(os.path.expanduser(w))
        return out

    return paths(ssh_config.get("userknownhostsfile"), DEFAULT_KNOWN_HOSTS) + paths(
        ssh_config.get("globalknownhostsfile"), GLOBAL_KNOWN_HOSTS
    )


def _verify_host_keys(conn: Connection) -> list[str]:
    """Refuse unknown host keys on the connection and on each ProxyJump hop before it; load
    the known_hosts files each one's configuration names. Returns the login host's files."""
    files: list[str] = []
    hop: object = conn
    while isinstance(hop, Connection):
        hop_files = known_hosts_files(hop.ssh_config)
        hop.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        for path in hop_files:
            if os.path.isfile(path):
                hop.client.load_system_host_keys(path)
        files = files or hop_files
        hop = hop.gateway
    return files


def _host_key_error(
    exc: BaseException, t: Target, files: list[str], port: int | None
) -> UserError | None:
    """One line for an unknown or changed host key, naming the host and how to accept it."""
    port = port or t.port
    opt = f"-p {port} " if port and port != 22 else ""
    where = f"site {t.site}"
    if isinstance(exc, paramiko.BadHostKeyException):
        name = f"[{exc.hostname}]:{port}" if opt else exc.hostname
        return UserError(
            f"{where}: the host key of {name} has changed (known_hosts has "
            f"{exc.expected_key.get_name()} {exc.expected_key.fingerprint}, the host sent "
            f"{exc.key.get_name()} {exc.key.fingerprint}): someone may be in the path, or "
            "the facility replaced its key; nothing was sent",
            fix=f"only if the facility announced this key (compare the fingerprint with its "
            f"page), remove the old one (`ssh-keygen -R '{name}'`) and connect once with "
            f"`ssh {opt}{t.host}`, then run the command again",
        )
    text = str(exc)
    if "not found in known_hosts" in text:
        name = text.split("'")[1] if text.count("'") >= 2 else t.host
        searched = ", ".join(files[:2]) or "~/.ssh/known_hosts"
        return UserError(
            f"{where}: the host key of {name} is not in your known_hosts ({searched}); "
            "crossfl connects only to a host it can verify",
            fix=f"check the key's fingerprint against the one the facility publishes, then "
            f"accept it once with `ssh {opt}{t.host}` (answer yes), or append "
            f"`ssh-keyscan {opt}{t.host}` to your known_hosts after comparing "
            "`ssh-keygen -lf` of it",
        )
    return None


def _connect_error(
    exc: BaseException | str,
    t: Target,
    known_hosts: list[str] | None = None,
    port: int | None = None,
) -> UserError:
    if isinstance(exc, BaseException):
        hostkey = _host_key_error(exc, t, known_hosts or [], port)
        if hostkey is not None:
            return hostkey
    where = f"site {t.site}: cannot open SSH to {t.label}"
    hint = (
        f"check deploy.host/user/port in {t.site_file or 'the site file'} and that "
        f"`ssh {t.host}` works"
    )
    text = str(exc).strip() or type(exc).__name__
    low = text.lower()
    if (
        isinstance(exc, paramiko.AuthenticationException)
        or "authentication" in low
        or "permission denied" in low
    ):
        return UserError(
            f"{where}: the server refused the key ({text})",
            fix=f"add your public key at the facility, or set IdentityFile for "
            f"{t.host} in ~/.ssh/config; {hint}",
        )
    refused = isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError)
    if refused or "connection refused" in low:
        return UserError(f"{where}: connection refused (nothing listens on the port)", fix=hint)
    if isinstance(exc, socket.gaierror) or "could not resolve" in low:
        return UserError(f"{where}: unknown host ({text})", fix=hint)
    if isinstance(exc, (socket.timeout, TimeoutError)) or "timed out" in low:
        return UserError(
            f"{where}: timed out after {CONNECT_TIMEOUT_S}s",
            fix=f"check VPN/firewall and ProxyJump; {hint}",
        )
    if "host key verification failed" in low or "host identification has changed" in low:
        return UserError(
            f"site {t.site}: the host key of {t.host} is unknown or has changed ({text}); "
            "crossfl connects only to a host it can verify",
            fix=f"check the fingerprint the facility publishes, then `ssh {t.host}` once "
            "(accept it, or after `ssh-keygen -R` where the facility replaced its key)",
        )
    if isinstance(exc, paramiko.ssh_exception.ProxyCommandFailure):
        return UserError(f"{where}: ProxyCommand/ProxyJump failed ({text})", fix=hint)
    return UserError(f"{where}: {text}", fix=hint)


# -- fabric / paramiko ----------------------------------------------------------------------------


class FabricChannel:
    name = "fabric"

    def __init__(self, t: Target) -> None:
        path = ssh_config_path()
        config = Config(runtime_ssh_path=path) if path else Config()  # ~/.ssh/config otherwise
        self.t = t
        self.conn = Connection(
            t.host, user=t.user, port=t.port, config=config, connect_timeout=CONNECT_TIMEOUT_S
        )
        files = _verify_host_keys(self.conn)
        try:
            self.conn.open()
        except Exception as exc:  # noqa: BLE001 - every failure here becomes one line
            self.conn.close()
            raise _connect_error(exc, t, files, self.conn.port) from None
        self._sftp: paramiko.SFTPClient | None = None

    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._sftp = self.conn.sftp()
        return self._sftp

    def run(self, script: str, timeout: int | None) -> CommandResult:
        try:
            transport = self.conn.client.get_transport()
            if transport is None or not transport.is_active():
                raise EOFError("the SSH connection closed")
            chan = transport.open_session(timeout=CONNECT_TIMEOUT_S)
            try:
                return _exec(chan, script, timeout)
            finally:
                chan.close()
        except CommandTimedOut:
            raise
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise _connect_error(exc, self.t) from None

    def write(self, path: str, data: bytes, mode: int) -> None:
        with self.sftp().open(path, "wb") as fh:
            fh.write(data)
        self.sftp().chmod(path, mode)

    def append(
        self, src: BinaryIO, path: str, offset: int, progress: Callable[[int], None]
    ) -> None:
        sftp = self.sftp()
        with sftp.open(path, "r+b" if offset else "wb") as dst:
            dst.set_pipelined(True)
            if offset:
                dst.truncate(offset)
                dst.seek(offset)
            for block in iter(lambda: src.read(CHUNK), b""):
                dst.write(block)
                progress(len(block))

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
        self.conn.close()


def _exec(chan: paramiko.Channel, script: str, timeout: int | None) -> CommandResult:
    """REMOTE_SHELL on an open session, `script` on its stdin; stdout and stderr read to
    their ends at once (neither can fill its window and stall the other)."""
    chan.exec_command(REMOTE_SHELL)
    chan.sendall(script.encode())
    chan.shutdown_write()
    out: dict[str, bytes] = {}

    def drain(key: str, stream: Callable[[int], bytes]) -> None:
        parts = []
        for block in iter(lambda: stream(CHUNK), b""):
            parts.append(block)
        out[key] = b"".join(parts)

    readers = [
        threading.Thread(target=drain, args=("out", chan.recv), daemon=True),
        threading.Thread(target=drain, args=("err", chan.recv_stderr), daemon=True),
    ]
    for th in readers:
        th.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    for th in readers:
        th.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if th.is_alive():
            chan.close()
            raise CommandTimedOut(None, timeout)  # type: ignore[arg-type]
    rc = chan.recv_exit_status()
    return CommandResult(
        out["out"].decode(errors="replace"), out["err"].decode(errors="replace"), rc
    )


# -- the system ssh, through a running ControlMaster ------------------------------------------


class OpenSshChannel:
    name = "openssh"

    def __init__(self, t: Target) -> None:
        self.t = t
        opts = [
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"ConnectTimeout={CONNECT_TIMEOUT_S}",
        ]
        path = ssh_config_path()
        if path:
            opts += ["-F", path]
        if t.port:
            opts += ["-p", str(t.port)]
        if t.user:
            opts += ["-l", t.user]
        self.base = ["ssh", *opts]

    @classmethod
    def master_running(cls, t: Target) -> bool:
        """True when `ssh -O check` finds a live ControlMaster for the host."""
        try:
            r = subprocess.run(
                [*cls(t).base, "-O", "check", t.host],
                capture_output=True,
                timeout=15,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return r.returncode == 0

    def run(self, script: str, timeout: int | None) -> CommandResult:
        try:
            r = subprocess.run(
                [*self.base, self.t.host, REMOTE_SHELL],
                capture_output=True,
                text=True,
                timeout=timeout,
                input=script,
            )
        except subprocess.TimeoutExpired as exc:
            raise CommandTimedOut(None, timeout) from exc  # type: ignore[arg-type]
        if r.returncode == 255:  # ssh's own failure, not the command's
            raise _connect_error(
                r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "ssh exited 255", self.t
            )
        return CommandResult(r.stdout, r.stderr, r.returncode)

    def _pipe(self, command: str, feed: Callable[[IO[bytes]], object]) -> None:
        proc = subprocess.Popen(
            [*self.base, self.t.host, command],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stderr is not None
        try:
            feed(proc.stdin)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        err = proc.stderr.read().decode(errors="replace").strip()
        if proc.wait() != 0:
            raise OSError(err.splitlines()[-1] if err else f"remote exit {proc.returncode}")

    def write(self, path: str, data: bytes, mode: int) -> None:
        p = quote(path)
        self._pipe(f"cat > {p} && chmod {mode:o} {p}", lambda w: w.write(data))

    def append(
        self, src: BinaryIO, path: str, offset: int, progress: Callable[[int], None]
    ) -> None:
        p = quote(path)
        cmd = f"truncate -s {offset} {p} && cat >> {p}" if offset else f"cat > {p}"

        def feed(w: IO[bytes]) -> None:
            for block in iter(lambda: src.read(CHUNK), b""):
                w.write(block)
                progress(len(block))

        self._pipe(cmd, feed)

    def close(self) -> None:
        pass


def open_channel(t: Target) -> Channel:
    want = os.environ.get(CHANNEL_ENV, "auto").lower()
    if want not in ("auto", "fabric", "openssh"):
        raise UserError(
            f"${CHANNEL_ENV}={want!r} is not one of auto, fabric, openssh",
            fix=f"unset {CHANNEL_ENV} or pick one of those",
        )
    if want == "openssh" or (want == "auto" and OpenSshChannel.master_running(t)):
        return OpenSshChannel(t)
    return FabricChannel(t)


# -- what the deploy steps use ------------------------------------------------------------------


class Remote:
    """Runs shell snippets and moves files on a login node; in dry-run, only prints them."""

    def __init__(
        self, target: Target, *, dry_run: bool = False, console: Console | None = None
    ) -> None:
        self.t = target
        self.dry_run = dry_run
        self.console = console or Console(stderr=True, soft_wrap=True)
        self._channel: Channel | None = None
        # The login node the endpoint runs on (deploy/state/): `run(..., pinned=True)` goes
        # there with `hop` (an ssh line) when the load-balanced host put us on another one.
        self.pinned_host: str | None = None
        self.hop = HOP_SSH
        self._landed: str | None = None

    def __enter__(self) -> Remote:
        if self.dry_run:
            self.say(f"would connect over SSH to {self.t.label}")
            return self
        self._channel = open_channel(self.t)
        if self._channel.name == "openssh":
            self.say(f"using your OpenSSH master connection to {self.t.host}")
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    @property
    def channel(self) -> Channel:
        if self._channel is None:
            raise RuntimeError("Remote used outside `with` or in dry-run")
        return self._channel

    def say(self, text: str) -> None:
        prefix = "[dim]\\[dry-run][/] " if self.dry_run else ""
        self.console.print(f"{prefix}{redact(text)}", highlight=False, soft_wrap=True)

    def script(self, script: str, *, activate: bool = False) -> str:
        """The text REMOTE_SHELL reads: the activate line (where asked), then `script`, in one
        group whose stdin is /dev/null, so no command in it can read the rest of the text."""
        if activate and self.t.activate:
            script = (
                f"{{ {self.t.activate}\n}} || {{ echo CROSSFL_ACTIVATE_FAILED=1; exit 97; }}"
                f"\n{script}"
            )
        return f"{{\n{script}\n}} </dev/null\n"

    def pin_to(self, host: str | None, hop: str | None = None) -> None:
        """Send `run(..., pinned=True)` commands to the login node `host` (None: wherever the
        connection landed)."""
        self.pinned_host = host
        if hop:
            self.hop = hop

    def landed(self) -> str:
        """The login node this connection reached (`hostname -f` there), once."""
        if self._landed is None:
            lines = self.run(LANDED).stdout.strip().splitlines()
            self._landed = lines[-1].strip() if lines else ""
        return self._landed

    def run(
        self,
        script: str,
        *,
        activate: bool = False,
        timeout: int | None = 120,
        label: str | None = None,
        pinned: bool = False,
    ) -> CommandResult:
        """Run `script` with bash on the login node; never raises on a non-zero exit.
        Dry-run prints the command (and returns an empty success); a real run prints `label`.
        `pinned`: on the login node the endpoint runs on (`pin_to`), through `hop` from the
        one the connection reached when they differ."""
        hop = pinned and self.pinned_host is not None
        if self.dry_run:
            shown = f"{self.t.activate} ; {script}" if (activate and self.t.activate) else script
            where = f"{self.t.label} -> {self.pinned_host}" if hop else self.t.label
            self.say(f"[cyan]{where}$[/] {_one_line(shown)}")
            return CommandResult("", "", 0)
        if label:
            self.say(label)
        text = self.script(script, activate=activate)
        if hop and self.pinned_host != self.landed():
            res = self._run_text(self.hop_script(text), script, timeout)
            if res.markers().get("HOP_FAILED"):
                raise UserError(
                    f"site {self.t.site}: the endpoint runs on the login node "
                    f"{self.pinned_host}; this connection reached {self.landed()}, and "
                    f"`{self.hop} {self.pinned_host}` from there failed: {res.tail()}",
                    fix=f"set deploy.host to {self.pinned_host} (or an ~/.ssh/config alias for "
                    "it), or deploy.login_hop to a line that reaches it; if that node is gone, "
                    "its endpoint is too: remove endpoint.login_host from "
                    f"deploy/state/{self.t.site}.json",
                )
            return res
        return self._run_text(text, script, timeout)

    def hop_script(self, text: str) -> str:
        """The text the reached login node runs to run `text` (what `script` makes) on the
        pinned one: `hop HOST bash -l -s`, `text` on that ssh's stdin from a quoted
        here-document (nothing in it is expanded, and it is in no command line on either
        node) whose delimiter no script can guess; ssh's own failure (255) is told apart
        from the command's, whichever channel."""
        end = f"CROSSFL_HOP_{secrets.token_hex(16)}"
        while end in text:  # pragma: no cover - 128 random bits
            end = f"CROSSFL_HOP_{secrets.token_hex(16)}"
        body = text.rstrip("\n")
        return self.script(
            f"{self.hop} {quote(self.pinned_host or '')} {REMOTE_SHELL} <<'{end}'\n"
            f"{body}\n{end}\n"
            'rc=$?\nif [ "$rc" -eq 255 ]; then echo CROSSFL_HOP_FAILED=1; exit 97; fi\n'
            'exit "$rc"'
        )

    def _run_text(self, text: str, script: str, timeout: int | None) -> CommandResult:
        try:
            return self.channel.run(text, timeout)
        except CommandTimedOut:
            raise UserError(
                f"site {self.t.site}: `{_one_line(script)[:80]}` on {self.t.label} "
                f"did not finish within {timeout}s",
                fix="check the login node's load, then run the command again",
            ) from None

    def write(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.channel.write(path, data, mode)

    def append(
        self, src: BinaryIO, path: str, offset: int, progress: Callable[[int], None]
    ) -> None:
        self.channel.append(src, path, offset, progress)

    def transfer_note(self, local: Path | str, remote: str, size: int, extra: str = "") -> None:
        self.say(f"upload {local} -> {self.t.label}:{remote} ({size:,} bytes{extra})")


def _one_line(script: str) -> str:
    return " ; ".join(ln.strip() for ln in script.strip().splitlines() if ln.strip())
