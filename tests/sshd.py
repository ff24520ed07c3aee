"""A real OpenSSH server for tests: Debian's /usr/sbin/sshd on 127.0.0.1, a free port, a
throwaway host key and client key, everything in a temporary directory. Its host key is in
the known_hosts file the client config names (crossfl refuses a host it cannot verify).

Use the `sshd` fixture (re-exported by the test modules that need it). It needs root (sshd
changes user for the session) and openssh-server; otherwise the test is skipped, saying why.
The server's sessions get `HOME=<tmp>/home`, so the remote side never touches the real home.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"


@dataclass
class SshServer:
    port: int
    root: Path  # the temporary directory
    home: Path  # HOME of the remote sessions
    client_key: Path  # authorized
    other_key: Path  # not authorized
    ssh_config: Path  # an OpenSSH client config with Host entries for this server
    user: str = "root"
    env: dict[str, str] = field(default_factory=dict)

    def client_config(
        self,
        *,
        key: Path | None = None,
        port: int | None = None,
        name: str = "ssh-config",
        extra: str = "",
        known_hosts: Path | None = None,
    ) -> Path:
        """An OpenSSH client config for Host 127.0.0.1 (what deploy.host names), trusting
        the keys in `known_hosts` (default: this server's own host key)."""
        path = self.root / name
        path.write_text(
            "Host 127.0.0.1\n"
            f"  Port {port or self.port}\n"
            f"  User {self.user}\n"
            f"  IdentityFile {key or self.client_key}\n"
            "  IdentitiesOnly yes\n"
            "  StrictHostKeyChecking yes\n"
            f"  UserKnownHostsFile {known_hosts or self.known_hosts}\n" + extra
        )
        return path

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    def known_hosts_with(self, public_key: Path, name: str) -> Path:
        """A known_hosts file saying this server's key is the one in `public_key`."""
        path = self.root / name
        kind, blob = public_key.read_text().split()[:2]
        path.write_text(f"[127.0.0.1]:{self.port} {kind} {blob}\n")
        return path

    def logins(self) -> int:
        """How many sessions the server has authenticated so far."""
        return (self.root / "sshd.log").read_text().count("Accepted publickey")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path, kind: str = "ed25519") -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited ({proc.returncode}): {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on {port}: {log.read_text()[-2000:]}")


def start_sshd(
    tmp: Path, env: dict[str, str] | None = None
) -> tuple[SshServer, subprocess.Popen[bytes]]:
    tmp.mkdir(parents=True, exist_ok=True)
    home = tmp / "home"
    home.mkdir()
    host_key, client_key, other_key = tmp / "host_key", tmp / "client_key", tmp / "other_key"
    for k in (host_key, client_key, other_key):
        _keygen(k)
    auth = tmp / "authorized_keys"
    auth.write_text((tmp / "client_key.pub").read_text())
    auth.chmod(0o600)
    port = free_port()
    set_env = {"HOME": str(home), **(env or {})}
    conf = tmp / "sshd_config"
    conf.write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {host_key}\n"
        f"PidFile {tmp / 'sshd.pid'}\nAuthorizedKeysFile {auth}\n"
        "StrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nPrintMotd no\n"
        "Subsystem sftp internal-sftp\nLogLevel VERBOSE\nMaxStartups 50\n"
        # one SetEnv line: sshd keeps the first value of a keyword, so a second line is ignored
        + "SetEnv "
        + " ".join(f"{k}={v}" for k, v in set_env.items())
        + "\n"
    )
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory
    log = tmp / "sshd.log"
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(conf)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_listening(port, proc, log)
    except BaseException:
        stop_sshd(proc)
        raise
    server = SshServer(
        port=port,
        root=tmp,
        home=home,
        client_key=client_key,
        other_key=other_key,
        ssh_config=tmp / "ssh-config",
        env=set_env,
    )
    server.known_hosts_with(tmp / "host_key.pub", "known_hosts")
    server.client_config()
    return server, proc


def stop_sshd(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "sshd fixture needs root (sshd switches to the session user)"
    if not Path(SSHD).is_file():
        return f"{SSHD} not installed (Debian package openssh-server)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen not installed"
    return None


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    server, proc = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        stop_sshd(proc)
