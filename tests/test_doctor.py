"""`crossfl doctor local-slurm-ssh [--smoke]` against the real sshd (tests/sshd.py) and the
real one-node Slurm (tests/slurm_cluster.py): sinfo, scontrol and sacctmgr answer for real,
the smoke job runs on the node's 4 fake GPUs. The scheduler's answers as PBS gives them are
tested from recorded text in test_doctor_pbs.py."""

from __future__ import annotations

import http.server
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crossfl.errors import UserError
from remote_project import activate_line, make_project, override
from sshd import SshServer, skip_reason, start_sshd, stop_sshd

SITE = "local-slurm-ssh"


@pytest.fixture(scope="module")
def slurm_sshd(slurm_cluster, tmp_path_factory) -> Iterator[SshServer]:
    """An sshd whose sessions reach the test Slurm (SLURM_CONF): its "login node"."""
    why = skip_reason()
    if why:
        pytest.skip(why)
    server, proc = start_sshd(
        tmp_path_factory.mktemp("sshd"), env={"SLURM_CONF": str(slurm_cluster.conf)}
    )
    try:
        yield server
    finally:
        stop_sshd(proc)


@pytest.fixture
def project(tmp_path: Path, slurm_sshd: SshServer, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = make_project(tmp_path / "proj", [SITE])
    monkeypatch.setenv("CROSSFL_ROOT", str(root))
    monkeypatch.setenv("CROSSFL_SITE_OVERRIDES", str(root / "overrides"))
    monkeypatch.setenv("CROSSFL_SSH_CONFIG", str(slurm_sshd.ssh_config))
    monkeypatch.setenv("CROSSFL_SSH_PORT", str(slurm_sshd.port))
    monkeypatch.setenv("CROSSFL_REMOTE_ROOT", str(slurm_sshd.home / tmp_path.name / "crossfl"))
    monkeypatch.setenv(
        "CROSSFL_REMOTE_ACTIVATE", activate_line(slurm_sshd.home / tmp_path.name / "gc")
    )
    return root


def doctor(*args: str) -> tuple[int, str]:
    import typer

    from crossfl.cli import doctor as cli_doctor

    app = typer.Typer()
    cli_doctor.register(app)
    app.command("noop", hidden=True)(lambda: None)
    res = CliRunner().invoke(app, ["doctor", *args])
    if isinstance(res.exception, UserError):
        return 2, res.output + "error: " + res.exception.render() + "\n"
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output


def table(out: str) -> list[str]:
    """The report (stdout); the progress lines before it go to stderr."""
    lines = out.splitlines()
    return lines[next(i for i, ln in enumerate(lines) if ln.startswith("check ")) :]


def rows(out: str) -> dict[str, tuple[str, str]]:
    """The table: check -> (status, detail with its continuation lines joined)."""
    table: dict[str, tuple[str, str]] = {}
    last = None
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("check "))
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        if line.startswith(" ") and last:
            status, detail = table[last]
            table[last] = (status, detail + " " + line.strip())
            continue
        name, status, detail = line[:15].strip(), line[16:20].strip(), line[21:]
        table[name] = (status, detail)
        last = name
    return table


def test_doctor_on_real_sshd_and_slurm(project: Path) -> None:
    code, out = doctor(SITE)
    print(out)
    assert all(len(line) <= 80 for line in table(out)), "the table fits 80 columns"
    t = rows(out)
    assert t["login"][0] == "ok" and "root on " in t["login"][1]
    assert t["server"][0] == "ok" and "python 3.11, parsl 2026.10.26" in t["server"][1]
    assert t["scheduler"] == ("ok", t["scheduler"][1])
    assert "slurm-wlm 22.05" in t["scheduler"][1] or "slurm " in t["scheduler"][1]
    assert "debug* (up)" in t["scheduler"][1]
    # the test cluster keeps no accounting: the check says so, as a warning
    assert t["account"][0] == "warn" and "sacctmgr cannot tell" in t["account"][1]
    assert "accounting_storage" in t["account"][1]
    assert t["modules"] == ("ok", "the site loads no modules")
    assert t["runtime"][0] == "ok" and t["image"][0] == "ok"
    # the endpoint CLI of the venv, against the version rule; not deployed yet
    assert t["endpoint"][0] == "warn" and "globus-compute-endpoint 4.19.0" in t["endpoint"][1]
    assert "match the version rule" in t["endpoint"][1]
    assert "not configured yet" in t["endpoint"][1]
    assert t["fs remote_root"][0] == "ok" and "writable" in t["fs remote_root"][1]
    assert "to be created in" in t["fs remote_root"][1] and "GB free" in t["fs remote_root"][1]
    # the catalog says 1 h and 1 node; the test partition has no limits: safe, but not equal
    assert t["queue debug"][0] == "warn"
    assert (
        "catalog says 01:00:00, 1 node; scheduler says MaxTime=UNLIMITED "
        "MaxNodes=UNLIMITED MinNodes=0" in t["queue debug"][1]
    )
    # no network here (or there is): either way the HTTP answer or its absence is reported
    assert "compute.api.globus.org" in t["globus"][1]
    assert t["globus"][0] in ("ok", "FAIL")
    failed = [k for k, (status, _) in t.items() if status == "FAIL"]
    assert failed in ([], ["globus"])
    assert code == (1 if failed else 0)
    assert f"{SITE}: {len(t)} checks, {len(failed)} FAIL" in out


def test_catalog_allowing_more_than_the_scheduler_fails(project: Path, slurm_cluster) -> None:
    """The partition's real limits made stricter than the catalog (scontrol update, as root):
    the catalog would let through what Slurm refuses -> FAIL, in Slurm's words."""
    env = slurm_cluster.env()
    subprocess.run(
        ["scontrol", "update", "PartitionName=debug", "MaxTime=00:30:00", "MaxNodes=1"],
        check=True,
        env=env,
    )
    try:
        code, out = doctor(SITE)
    finally:
        subprocess.run(
            [
                "scontrol",
                "update",
                "PartitionName=debug",
                "MaxTime=UNLIMITED",
                "MaxNodes=UNLIMITED",
            ],
            check=True,
            env=env,
        )
    print(out)
    status, detail = rows(out)["queue debug"]
    assert code == 1 and status == "FAIL"
    assert "catalog says 01:00:00, 1 node; scheduler says MaxTime=00:30:00 MaxNodes=1" in detail


def test_a_queue_the_scheduler_does_not_have(project: Path) -> None:
    override(project, SITE, {"queue": "gpu", "queues": {"gpu": {"max_walltime": "02:00:00"}}})
    code, out = doctor(SITE)
    t = rows(out)
    assert code == 1 and t["queue gpu"][0] == "FAIL"
    assert "scheduler has no partition gpu (scontrol: partition gpu not found)" in t["queue gpu"][1]
    assert t["queue debug"][0] == "warn"  # the other catalog queue is still compared


class _Proxy(http.server.BaseHTTPRequestHandler):
    """An HTTP proxy that answers every absolute-URI GET with 200 and remembers it."""

    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).seen.append(self.path)
        body = b'{"api": "test"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_globus_check_goes_through_the_site_proxy(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service URL is one the login node cannot resolve; the site's proxy answers it."""
    from crossfl.deploy import doctor as doc

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proxy = f"http://127.0.0.1:{server.server_address[1]}"
        override(project, SITE, {"proxy": {"http": proxy, "https": proxy}})
        monkeypatch.setattr(doc, "GLOBUS_URL", "http://compute.api.globus.invalid/v2/version")
        code, out = doctor(SITE)
    finally:
        server.shutdown()
    print(out)
    status, detail = rows(out)["globus"]
    assert status == "ok" and f"site proxy {proxy}: HTTP 200" in detail
    assert "login env (no proxy): no answer (URLError" in detail
    assert _Proxy.seen == ["http://compute.api.globus.invalid/v2/version"]


def test_endpoint_against_the_image_labels(
    project: Path, slurm_sshd: SshServer, tmp_path: Path
) -> None:
    """With an image, the login node's endpoint stack is compared with the image's labels
    (read with `apptainer inspect` there, a stand-in apptainer first on the login PATH): a
    differing parsl pin is a FAIL naming both."""
    import json
    import os

    from testkit import fake_apptainer

    from crossfl.deploy.image import expected_labels

    bindir = tmp_path / "fakebin"
    fake_apptainer.install(bindir)
    profile = slurm_sshd.home / ".bash_profile"
    profile.write_text(f"export PATH={bindir}:$PATH\n")
    try:
        override(
            project,
            SITE,
            {
                "container": {
                    "runtime": "apptainer",
                    "images": {"cuda": "{{remote_root}}/images/crossfl-cuda.sif"},
                }
            },
        )
        image = Path(os.environ["CROSSFL_REMOTE_ROOT"]) / "images" / "crossfl-cuda.sif"
        image.parent.mkdir(parents=True)
        image.write_text(
            json.dumps({"labels": {**expected_labels(), "org.crossfl.pin.parsl": "2020.1.1"}})
        )
        code, out = doctor(SITE)
    finally:
        profile.unlink()
    print(out)
    t = rows(out)
    assert t["runtime"] == ("ok", "apptainer version 1.3.6-fake")
    assert t["image"][0] == "warn" and "not recorded here" in t["image"][1]
    assert t["endpoint"][0] == "FAIL" and "differs from the image's labels" in t["endpoint"][1]
    assert "(want 2020.1.1)" in t["endpoint"][1]
    assert t["fs images"][0] == "ok" and code == 1


def test_smoke_reports_every_rank(project: Path) -> None:
    code, out = doctor(SITE, "--smoke", "--timeout", "10")
    print(out)
    assert all(len(line) <= 80 for line in table(out))
    ranks = [ln for ln in out.splitlines() if ln.startswith("rank ")]
    assert len(ranks) == 4, out  # one per (fake) GPU of the node
    assert [ln.split()[1] for ln in ranks] == ["0", "1", "2", "3"]
    status, detail = rows(out)["smoke"]
    assert "COMPLETED" in detail and "4 of 4 ranks reported" in detail
    # What the ranks saw, as it is: this test cluster runs TaskPlugin=task/none, so
    # `--gpu-bind=closest` has no CPU binding to be close to and every rank gets all four
    # devices; the catalog lists CUDA devices but torch here is the CPU build. Both are
    # reported, never passed over (at a facility either one means workers share or miss GPUs).
    assert "CUDA_VISIBLE_DEVICES=0,1,2,3" in out
    assert "ranks are not bound to one device each (CUDA_VISIBLE_DEVICES: 0,1,2,3," in detail
    assert "4 of them see no cuda device (torch on cpu)" in detail
    assert status == "FAIL" and code == 1
    # the collective: 2 ranks of the one node, gloo (the stand-in GPUs run CPU torch), a right
    # all-reduce and one DDP step with equal parameters, each with its bandwidth
    coll = [ln for ln in out.splitlines() if ln.startswith("collective rank ")]
    assert [ln.split()[2] for ln in coll] == ["0/2", "1/2"], out
    assert all("(gloo)" in ln and "all-reduce 8.0 MB ok" in ln for ln in coll), out
    joined = " ".join(out.split())
    assert joined.count("DDP step ok") == 2 and "GB/s bus" in joined
    assert "collective 2 of 2 ranks on 1 node(s)" in detail
    assert "collective:" not in detail  # no collective problem among the FAIL's reasons


def test_smoke_problems_of_bound_ranks() -> None:
    """The same judgement on ranks bound as at a facility: one device each, on the GPU."""
    from crossfl import sites
    from crossfl.deploy.doctor import smoke_problems

    site = sites.load_site("frontier")
    good = [{"device": "cuda", "visible": {"ROCR_VISIBLE_DEVICES": str(i)}} for i in range(8)]
    assert smoke_problems(site, good) == []
    parsl_3858 = [{**r, "visible": {"ROCR_VISIBLE_DEVICES": "0"}} for r in good]
    assert smoke_problems(site, parsl_3858) == [
        "ranks are not bound to one device each (ROCR_VISIBLE_DEVICES: 0, 0, 0, 0, 0, 0, 0, 0)"
    ]
    assert smoke_problems(site, good[:7]) == ["expected 8 ranks, one per device"]


def test_collective_problems_are_named() -> None:
    """What the collective's reports can show wrong, each named: a wrong sum, DDP parameters
    that differ, the wrong backend, ranks or nodes missing, a rank's error."""
    from crossfl import sites
    from crossfl.deploy.doctor import collective_problems

    site = sites.load_site("polaris")  # 2 ranks on each of 2 nodes, NCCL
    good = [
        {
            "rank": r,
            "host": f"x300{r // 2}",
            "backend": "nccl",
            "all_reduce": {"ok": True},
            "ddp": {"ok": True},
        }
        for r in range(4)
    ]
    assert collective_problems(site, good) == []
    wrong = [{**good[0], "all_reduce": {"ok": False}}, *good[1:]]
    assert collective_problems(site, wrong) == ["collective: all-reduce sum wrong on ranks [0]"]
    gloo = [{**x, "backend": "gloo"} for x in good]
    assert collective_problems(site, gloo) == ["collective: backend gloo, expected nccl"]
    one_node = [{**x, "host": "x3000"} for x in good]
    assert collective_problems(site, one_node) == ["collective: ranks on 1 node(s), expected 2"]
    differ = [*good[:3], {**good[3], "ddp": {"ok": False}}]
    assert collective_problems(site, differ) == [
        "collective: DDP parameters differ after one step (ranks [3])"
    ]
    assert collective_problems(site, good[:2])[0] == "collective: expected 4 ranks, got 2"


def test_purged_filesystem_days_left(project: Path, slurm_sshd) -> None:
    """Frontier's remote root is on Orion, which deletes what nobody read or wrote for 90 days:
    doctor says how many days what deploy placed has left, and warns two weeks ahead."""
    import os
    import time

    override(project, SITE, {"deploy": {"purge": {"days": 90}}})
    code, out = doctor(SITE)
    assert rows(out)["purge"][0] == "warn" and "nothing placed yet" in rows(out)["purge"][1]
    root = Path(os.environ["CROSSFL_REMOTE_ROOT"])
    stamp = root / "bundle" / ".crossfl-bundle.sha256"
    stamp.parent.mkdir(parents=True)
    stamp.write_text("x\n")
    old = time.time() - 80 * 86400  # last read or written 80 days ago
    os.utime(stamp, (old, old))
    code, out = doctor(SITE)
    status, detail = rows(out)["purge"]
    assert status == "warn" and "bundle 10 days left" in detail, detail
    assert "deploy again" in detail
