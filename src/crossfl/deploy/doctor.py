"""`crossfl doctor SITE [--smoke]`: what the site's login node and scheduler say, checked over
the same SSH connection `crossfl deploy` uses, one line per check (ok, warn or FAIL):

  login      who and where the connection lands (hostname, user, remote home)
  server     this checkout's Python and pins against the version rule (endpoint_env.rule)
  scheduler  the scheduler answers (Scheduler.status_command: sinfo / qstat -B)
  account    the site's account is yours (sacctmgr assoc on Slurm; ALCF's sbank where it is
             installed; where the scheduler cannot tell, warn and say so)
  modules    each of the site's modules loads in a login shell (`module load`)
  runtime    the container runtime answers `<runtime> --version` with the modules loaded
  image      the image is at its path with the sha256 the state file recorded (compared with
             the `.sha256` written there when it was placed)
  endpoint   globus-compute-endpoint is installed (after deploy.python_activate) and its
             Python minor, parsl, dill and globus-compute packages equal the image's labels
             (or, before there is an image or without a container, the version rule's)
  fs ...     remote_root, the images directory and data_dir are writable (a file is created
             and removed in the deepest existing directory), with the free space
  globus     an HTTPS request to the Globus Compute service from the login node, as the
             endpoint would make it, and through the site's proxy: the HTTP status
  queue X    each catalog queue's limits as the scheduler itself reports them
             (Scheduler.limits_command: scontrol show partition / sacctmgr show qos /
             qstat -Qf): "catalog says X; scheduler says Y"; FAIL where the catalog allows
             more than the scheduler does, or the site's own queue does not exist
  smoke      (--smoke) the rendered batch/smoke.sh submitted and waited for with the
             scheduler's query; one line per rank with what it sees (devices, device env),
             then the collective (site.smoke: 2 ranks on each of its nodes): per rank its
             device, backend, all-reduce (right sum, bus bandwidth) and one DDP step of the
             tiny model (parameters equal on every rank)

Exit status 1 on any FAIL. Checks never stop each other; only a failed SSH connection does.
"""

from __future__ import annotations

import json
import shlex
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from rich.console import Console

from crossfl.deploy import endpoint_env, gce, jobs
from crossfl.deploy.flow import target_of
from crossfl.deploy.image import LABEL_PIN, LABEL_PYTHON, expected_labels, parse_inspect
from crossfl.deploy.remote import Remote
from crossfl.errors import UserError
from crossfl.quoting import quote
from crossfl.redact import redact
from crossfl.render import render_site
from crossfl.render.batch import smoke_shape
from crossfl.schedulers import QueueLimits, parse_walltime
from crossfl.sites import Queue, Site, check_request, load_site
from crossfl.state import ImageState, load_state

Status = Literal["ok", "warn", "FAIL"]
GLOBUS_URL = "https://compute.api.globus.org/v2/version"
WIDTH = 80
NAME_W = 15
STATUS_W = 4
VERSIONED = ("parsl", "dill", "globus-compute-endpoint", "globus-compute-sdk")


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str


@dataclass
class Report:
    site: str
    checks: list[Check] = field(default_factory=list)
    ranks: list[str] = field(default_factory=list)  # --smoke: one line per rank

    @property
    def failed(self) -> bool:
        return any(c.status == "FAIL" for c in self.checks)

    def add(self, name: str, status: Status, detail: str) -> None:
        self.checks.append(Check(name, status, redact(detail)))


# -- the table ------------------------------------------------------------------------------------


def table_lines(report: Report) -> Iterator[str]:
    """The checks as a table of at most WIDTH columns: check, status, detail (wrapped)."""
    indent = " " * (NAME_W + STATUS_W + 2)
    yield f"{'check':<{NAME_W}} {'stat':<{STATUS_W}} detail"
    yield f"{'-' * NAME_W} {'-' * STATUS_W} {'-' * (WIDTH - NAME_W - STATUS_W - 2)}"
    for c in report.checks:
        head = f"{c.name[:NAME_W]:<{NAME_W}} {c.status:<{STATUS_W}} "
        yield from textwrap.wrap(
            c.detail or "-",
            WIDTH,
            initial_indent=head,
            subsequent_indent=indent,
            break_on_hyphens=False,
        ) or [head]
    if report.ranks:
        yield ""
        for line in report.ranks:
            yield from textwrap.wrap(line, WIDTH, subsequent_indent="    ", break_on_hyphens=False)
    fails = sum(c.status == "FAIL" for c in report.checks)
    warns = sum(c.status == "warn" for c in report.checks)
    yield ""
    yield f"{report.site}: {len(report.checks)} checks, {fails} FAIL, {warns} warn"


def print_report(report: Report, console: Console | None = None) -> None:
    console = console or Console(highlight=False, soft_wrap=True)
    for line in table_lines(report):
        console.print(line, markup=False, highlight=False)


# -- the checks -----------------------------------------------------------------------------------


def run_doctor(
    name: str, *, smoke: bool = False, smoke_wait_s: float = 1800.0, console: Console | None = None
) -> Report:
    site = load_site(name)
    t = target_of(site)
    log = console or Console(stderr=True, soft_wrap=True)
    report = Report(site.name)
    with Remote(t, console=log) as r:
        d = _Doctor(site, r, report)
        d.login()
        d.server()
        d.scheduler()
        d.account()
        d.modules()
        d.runtime()
        labels = d.image()
        d.endpoint(labels)
        d.filesystems()
        d.purge()
        d.globus()
        d.queues()
        if smoke:
            d.smoke(smoke_wait_s)
    return report


@dataclass
class _Doctor:
    site: Site
    r: Remote
    report: Report
    home: str = "$HOME"
    root: str = ""

    def add(self, name: str, status: Status, detail: str) -> None:
        self.report.add(name, status, detail)

    @property
    def modules_lines(self) -> str:
        """`module use/load` of the site's modules, as the batch jobs load them."""
        lines = [f"module use {quote(u)}" for u in self.site.module_use]
        lines += [f"module load {quote(m)}" for m in self.site.modules]
        return "".join(f"{line} >/dev/null 2>&1\n" for line in lines)

    def resolve(self, path: str) -> str:
        return gce.resolve_path(path, self.home, self.root, self.site.deploy.remote_root)

    def login(self) -> None:
        root = quote(self.site.deploy.remote_root)
        res = self.r.run(
            f"echo CROSSFL_HOST=$(hostname); echo CROSSFL_USER=${{USER:-$(id -un)}}; "
            f"echo CROSSFL_HOME=$HOME; echo CROSSFL_ROOT={root}"
        )
        m = res.markers()
        if not res.ok or "HOME" not in m:
            self.add("login", "FAIL", f"the login shell on {self.r.t.label} failed: {res.tail()}")
            return
        self.home, self.root = m["HOME"], m["ROOT"]
        self.add(
            "login",
            "ok",
            f"{m.get('USER')} on {m.get('HOST')} (via {self.r.t.label}); remote root {self.root}",
        )

    def server(self) -> None:
        """The version rule on this side: the server's Python and pins."""
        bad = endpoint_env.mismatches(endpoint_env.local_versions())
        if bad:
            self.add("server", "FAIL", f"this checkout breaks the version rule: {'; '.join(bad)}")
        else:
            self.add(
                "server", "ok", f"this checkout runs the version rule ({endpoint_env.rule_text()})"
            )

    def scheduler(self) -> None:
        sched = self.site.sched
        line = sched.status_command()
        if not sched.batch or line is None:
            self.add("scheduler", "ok", f"none ({sched.title}: no batch jobs)")
            return
        res = self.r.run(line)
        summary = sched.parse_status(res.stdout + res.stderr, res.rc)
        if summary is None:
            self.add("scheduler", "FAIL", f"{sched.title} did not answer `{line}`: {res.tail()}")
        else:
            self.add("scheduler", "ok", summary)

    def account(self) -> None:
        sched = self.site.sched
        if not sched.batch:
            return
        line = sched.account_command(self.site.account)
        if line is None:
            check = sched.parse_account(self.site.account, "", 0)
        else:
            res = self.r.run(line)
            check = sched.parse_account(self.site.account, res.stdout + res.stderr, res.rc)
        status: Status = "ok" if check.valid else ("FAIL" if check.valid is False else "warn")
        self.add("account", status, check.detail)

    def modules(self) -> None:
        site = self.site
        if not site.modules and not site.module_use:
            self.add("modules", "ok", "the site loads no modules")
            return
        uses = "".join(
            f'module use {quote(u)} 2>"$e" || echo CROSSFL_BAD={quote("use " + u)}": $(tail -1 "$e")"\n'
            for u in site.module_use
        )
        loads = "".join(
            f'module load {quote(m)} 2>"$e" || echo CROSSFL_BAD={quote(m)}": $(tail -1 "$e")"\n'
            for m in site.modules
        )
        res = self.r.run(
            "type module >/dev/null 2>&1 || { echo CROSSFL_NOMODULE=1; exit 0; }\n"
            f'e=$(mktemp)\n{uses}{loads}rm -f "$e"'
        )
        bad = [
            ln.split("=", 1)[1] for ln in res.stdout.splitlines() if ln.startswith("CROSSFL_BAD=")
        ]
        names = " ".join(site.modules)
        if res.markers().get("NOMODULE"):
            self.add(
                "modules", "FAIL", f"no `module` command in a login shell; the site loads {names}"
            )
        elif bad or not res.ok:
            self.add("modules", "FAIL", "; ".join(bad) or res.tail())
        else:
            self.add("modules", "ok", f"loaded: {names}")

    def runtime(self) -> None:
        rt = self.site.container.runtime
        if rt == "none":
            self.add("runtime", "ok", "no container (container.runtime: none)")
            return
        res = self.r.run(f"{self.modules_lines}{quote(rt)} --version 2>&1")
        if res.ok and res.stdout.strip():
            self.add("runtime", "ok", res.stdout.strip().splitlines()[-1])
        else:
            self.add(
                "runtime",
                "FAIL",
                f"`{rt} --version` failed with the site's modules loaded: {res.tail()}",
            )

    def image(self) -> dict[str, str] | None:
        """The image check; returns the image's labels when they could be read."""
        site = self.site
        raw = site.image()
        if raw is None:
            self.add("image", "ok", "no container")
            return None
        state = load_state(site.name)
        rec = state.image if state else None
        if site.container.runtime == "podman-hpc":
            return self.podman_image(rec)
        path = rec.remote_path if rec else self.resolve(raw)
        res = self.r.run(
            f'p={quote(path)}; [ -f "$p" ] && echo CROSSFL_SIZE=$(stat -c %s "$p"); '
            f'echo CROSSFL_SHA=$(cat "$p.sha256" 2>/dev/null); '
            f'echo CROSSFL_ORIGIN=$(cat "$p.origin" 2>/dev/null); true'
        )
        m = res.markers()
        method = site.container.image_source.method
        if not m.get("SIZE"):
            if rec is None:
                self.add(
                    "image",
                    "warn",
                    f"not at {path} yet: `crossfl deploy {site.name}` "
                    f"places it (image_source: {method})",
                )
            else:
                self.add(
                    "image",
                    "FAIL",
                    f"missing at {path}; the state file records "
                    f"sha256:{rec.sha256[:12]} ({rec.source})",
                )
            return None
        sha = m.get("SHA", "").split(" ")[0]
        size = int(m["SIZE"])
        gb = f"{size / 1e9:.1f} GB" if size >= 1e8 else f"{size:,} bytes"
        if rec is None:
            self.add(
                "image",
                "warn",
                f"{path} is there ({gb}, sha256:{sha[:12] or '?'}) but "
                f"not recorded here: deploy records it",
            )
        elif rec.sha256 != sha or rec.size != size:
            self.add(
                "image",
                "FAIL",
                f"{path} is sha256:{sha[:12] or '?'} ({gb}); the state "
                f"file records sha256:{rec.sha256[:12]} ({rec.size:,} "
                "bytes): replaced since deploy placed it",
            )
        else:
            self.add("image", "ok", f"{path} sha256:{sha[:12]} as recorded ({rec.source}, {gb})")
        if site.container.runtime != "apptainer":
            return rec.labels if rec else None
        res = self.r.run(f"{self.modules_lines}apptainer inspect --labels --json {quote(path)}")
        return (parse_inspect(res.stdout) if res.ok else None) or (rec.labels if rec else None)

    def podman_image(self, rec: ImageState | None) -> dict[str, str] | None:
        """podman-hpc: the image deploy placed, by its ID, in podman-hpc's stores (a migrated
        image sits in $SCRATCH/storage, squashed)."""
        from crossfl.deploy.podman import parse_inspect

        site = self.site
        if rec is None:
            method = site.container.image_source.method
            self.add(
                "image",
                "warn",
                f"none placed yet: `crossfl deploy {site.name}` builds or pulls it ({method})",
            )
            return None
        res = self.r.run(f"{self.modules_lines}podman-hpc image inspect {quote(rec.sha256)} 2>&1")
        found = parse_inspect(res.stdout) if res.ok else None
        if found is None or found["id"] != rec.sha256:
            self.add(
                "image",
                "FAIL",
                f"podman-hpc has no image {rec.sha256[:12]} ({rec.remote_path}), the one deploy "
                f"placed: {res.tail()}",
            )
            return None
        self.add(
            "image", "ok", f"{rec.remote_path} ID {rec.sha256[:12]} as recorded ({rec.source})"
        )
        return found["labels"] or rec.labels

    def endpoint(self, labels: dict[str, str] | None) -> None:
        ep = self.site.deploy.endpoint_name
        script = textwrap.dedent(f"""\
            g=$(command -v globus-compute-endpoint) || {{ echo CROSSFL_NOGCE=1; exit 0; }}
            echo CROSSFL_GCE_VERSION=$(globus-compute-endpoint version 2>/dev/null | tail -1)
            py=$(sed -n '1s/^#!//p' "$g"); case "$py" in */python*) ;; *) py=python3;; esac
            $py -c {shlex.quote(_VERSIONS_PY)}
            d=${{GLOBUS_COMPUTE_USER_DIR:-$HOME/.globus_compute}}/{quote(ep)}
            [ -f "$d/config.yaml" ] && echo CROSSFL_CONFIGURED=1; true""")
        res = self.r.run(script, activate=True)
        m = res.markers()
        if m.get("ACTIVATE_FAILED"):
            self.add("endpoint", "FAIL", f"deploy.python_activate failed: {res.tail()}")
            return
        if m.get("NOGCE") or not res.ok:
            self.add(
                "endpoint",
                "FAIL",
                "globus-compute-endpoint is not on PATH after "
                "deploy.python_activate" + (f": {res.tail()}" if not res.ok else ""),
            )
            return
        try:
            have = json.loads(m.get("VERSIONS", "{}"))
        except ValueError:
            have = {}
        have["globus-compute-endpoint"] = m.get("GCE_VERSION", "").rsplit(" ", 1)[-1] or have.get(
            "globus-compute-endpoint"
        )
        if labels and LABEL_PYTHON in labels:
            want, against = _wanted(labels), "the image's labels"
        else:
            want = _wanted(expected_labels())
            against = "the version rule" + (" (no image read)" if self.site.image() else "")
        bad = [
            f"{k} {have.get(k) or 'missing'} (want {v})"
            for k, v in want.items()
            if have.get(k) != v
        ]
        shown = ", ".join(f"{k} {have.get(k)}" for k in ("python", *VERSIONED) if have.get(k))
        if bad:
            self.add("endpoint", "FAIL", f"differs from {against}: {'; '.join(bad)}")
        elif not m.get("CONFIGURED"):
            self.add(
                "endpoint",
                "warn",
                f"{shown} match {against}; endpoint {ep} not configured yet (crossfl deploy)",
            )
        else:
            self.add("endpoint", "ok", f"{ep} configured; {shown} match {against}")

    def filesystems(self) -> None:
        site = self.site
        paths = {"fs remote_root": self.root or self.resolve(site.deploy.remote_root)}
        if site.image():
            paths["fs images"] = self.resolve(site.image() or "").rsplit("/", 1)[0]
        if site.deploy.data_dir:
            paths["fs data_dir"] = self.resolve(site.deploy.data_dir)
        for name, path in paths.items():
            res = self.r.run(
                f'p={quote(path)}; while [ ! -d "$p" ] && [ "$p" != / ]; do p=$(dirname "$p");'
                f" done; echo CROSSFL_AT=$p; "
                f'if t=$(mktemp -p "$p" .crossfl-doctor.XXXXXX 2>&1); then rm -f "$t"; '
                f'echo CROSSFL_W=1; else echo "CROSSFL_ERR=$t"; fi; '
                f"echo CROSSFL_FREE=$(df -Pk \"$p\" | tail -1 | awk '{{print $4}}')"
            )
            m = res.markers()
            at = m.get("AT", path)
            free = m.get("FREE", "")
            free_text = f", {int(free) * 1024 / 1e9:,.1f} GB free" if free.isdigit() else ""
            where = path if at == path else f"{path} (to be created in {at})"
            if m.get("W"):
                self.add(name, "ok", f"{where} writable{free_text}")
            else:
                self.add(name, "FAIL", f"{where} not writable: {m.get('ERR') or res.tail()}")

    def purge(self) -> None:
        """Where remote_root's filesystem purges unused files (Orion): the days the image and
        the bundle have left, from the last time they were read or written there."""
        site = self.site
        rule = site.deploy.purge
        if rule is None:
            return
        state = load_state(site.name)
        paths = {"bundle": f"{self.root}/bundle/.crossfl-bundle.sha256"}
        if state and state.image and site.container.runtime == "apptainer":
            paths = {"image": state.image.remote_path, **paths}
        script = (
            "".join(
                f"echo CROSSFL_{k.upper()}=$(stat -c '%X %Y' {quote(p)} 2>/dev/null); "
                for k, p in paths.items()
            )
            + "echo CROSSFL_NOW=$(date +%s)"
        )
        m = self.r.run(script).markers()
        now_s = int(m.get("NOW") or 0)
        left = {}
        for k in paths:
            stamps = [int(x) for x in m.get(k.upper(), "").split() if x.isdigit()]
            if stamps and now_s:
                left[k] = rule.days - (now_s - max(stamps)) // 86400
        if not left:
            self.add("purge", "warn", f"purged after {rule.days} days unused; nothing placed yet")
            return
        shown = ", ".join(f"{k} {d} days left" for k, d in left.items())
        soon = min(left.values()) <= 14
        self.add(
            "purge",
            "warn" if soon else "ok",
            f"{self.root} is purged after {rule.days} days unused: {shown}"
            + ("; deploy again (or run a task) to keep them" if soon else ""),
        )

    def globus(self) -> None:
        probe = f"$py -c {shlex.quote(_HTTP_PY)} {shlex.quote(GLOBUS_URL)}"
        direct, via = f"{probe} DIRECT", f"{probe} VIA"
        find_py = (
            "py=$(command -v python3 || command -v python); "
            "g=$(command -v globus-compute-endpoint) && "
            'p=$(sed -n \'1s/^#!//p\' "$g") && case "$p" in */python*) py=$p;; esac\n'
        )
        proxy_env = self.site.proxy.env()
        script = find_py + "echo CROSSFL_PROXY=${https_proxy:-${HTTPS_PROXY:-}}\n" + direct + "\n"
        if proxy_env:
            exports = " ".join(f"{k}={quote(v)}" for k, v in proxy_env.items())
            script += f"( export {exports}; {via} )\n"
        res = self.r.run(script, activate=True, timeout=120)
        m = res.markers()
        env_proxy = m.get("PROXY") or "no proxy"
        parts = [f"login env ({env_proxy}): {_http_text(m.get('DIRECT'), m.get('DIRECTERR'))}"]
        reached = m.get("DIRECT") is not None
        if proxy_env:
            shown = _http_text(m.get("VIA"), m.get("VIAERR"))
            parts.append(f"site proxy {self.site.proxy.https or self.site.proxy.http}: {shown}")
            reached = reached or m.get("VIA") is not None
        detail = f"{GLOBUS_URL}: " + "; ".join(parts)
        self.add("globus", "ok" if reached else "FAIL", detail)

    def queues(self) -> None:
        site, sched = self.site, self.site.sched
        if not sched.batch:
            return
        by = site.limits_by
        mine = site.limited_by()
        names = list(site.queues)
        if mine and mine not in names:
            names.append(mine)
        for name in names:
            entry = site.queues.get(name)
            asked = (entry.scheduler_name if entry else None) or name
            line = sched.limits_command(asked, by)
            if line is None:
                self.add(f"queue {name}", "warn", f"{sched.title} has no command to show limits")
                continue
            res = self.r.run(line)
            got = sched.parse_limits(asked, res.stdout + res.stderr, res.rc, by)
            status, detail = compare_limits(
                site.queues.get(name),
                got,
                sched.queue_word if by == "queue" else "QOS",
                name == mine,
            )
            self.add(f"queue {name}", status, detail)

    def smoke(self, wait_s: float) -> None:
        site, sched, r = self.site, self.site.sched, self.r
        if not sched.batch or sched.submit_command("x") is None:
            self.add("smoke", "warn", f"{sched.title} runs no batch jobs: no smoke job")
            return
        nodes, per_node = smoke_shape(site)
        try:  # the collective's nodes in the smoke job's queue: refused here, not there
            check_request(site, {"nodes_per_block": nodes}, production=False)
        except UserError as exc:
            self.add("smoke", "FAIL", f"the smoke job's {nodes} nodes: {exc.message}")
            return
        rendered = render_site(site) / "batch" / "smoke.sh"
        where = f"{self.root}/doctor"
        script = f"{where}/smoke.sh"
        r.run(f"mkdir -p {quote(where)}")
        r.write(script, rendered.read_bytes(), 0o755)
        try:
            job = jobs.submit(r, sched, script, where, f"crossfl-smoke-{site.name}", "smoke")
        except UserError as exc:  # a refused job is this check's answer
            self.add("smoke", "FAIL", exc.message)
            return
        st = jobs.wait(r, sched, job, timeout_s=wait_s, what="smoke job")
        out = r.run(f"cat {quote(job.output)} 2>&1")
        every = _rank_reports(out.stdout)
        reports = [x for x in every if not x.get("collective")]
        coll = [x for x in every if x.get("collective")]
        self.report.ranks = [_rank_line(x) for x in reports] + [_collective_line(x) for x in coll]
        expected = max(site.accelerator.devices_per_node, 1)  # smoke.sh: one node
        where_txt = f"job {job.job_id} {st.state} {st.detail}".strip()
        if not st.done:
            self.add(
                "smoke",
                "FAIL",
                f"{where_txt} after {wait_s / 60:.0f} min; it keeps "
                f"its place in the queue (output: {job.output})",
            )
        elif not st.ok or not reports:
            self.add("smoke", "FAIL", f"{where_txt}: {out.tail(2)} (output: {job.output})")
        else:
            problems = smoke_problems(site, reports) + collective_problems(site, coll)
            seen = (
                f"{where_txt}: {len(reports)} of {expected} ranks reported; collective "
                f"{len(coll)} of {nodes * per_node} ranks on {nodes} node(s)"
            )
            self.add("smoke", "FAIL" if problems else "ok", "; ".join([seen, *problems]))


def smoke_problems(site: Site, reports: list[dict]) -> list[str]:
    """What the ranks' reports show wrong: ranks missing, ranks not bound to one device each
    (the launcher's binding, as the vendor's variable shows it), ranks on CPU although the
    catalog lists accelerators."""
    acc = site.accelerator
    problems = []
    expected = max(acc.devices_per_node, 1)
    if len(reports) != expected:
        problems.append(f"expected {expected} ranks, one per device")
    var = acc.visible_devices_env
    if var and acc.devices_per_node > 1 and acc.bind != "none":
        values = [(x.get("visible") or {}).get(var) for x in reports]
        if any(v is None or "," in v for v in values) or len(set(values)) != len(values):
            shown = ", ".join(v if v is not None else "unset" for v in values)
            problems.append(f"ranks are not bound to one device each ({var}: {shown})")
    on_cpu = [x for x in reports if acc.vendor != "none" and x.get("device") == "cpu"]
    if on_cpu:
        problems.append(f"{len(on_cpu)} of them see no {acc.vendor} device (torch on cpu)")
    return problems


def expected_backend(site: Site) -> set[str]:
    """The collective backend the site's ranks must use (crossfl.client.distributed)."""
    acc = site.accelerator
    if acc.vendor == "none" or acc.simulated:
        return {"gloo"}
    return {"xccl", "ccl"} if acc.vendor == "xpu" else {"nccl"}


def collective_problems(site: Site, reports: list[dict]) -> list[str]:
    """What the collective's ranks show wrong: ranks or nodes missing, a rank that failed, an
    all-reduce whose sum was wrong, DDP parameters that differ, another backend than the
    device's."""
    nodes, per_node = smoke_shape(site)
    problems = []
    if len(reports) != nodes * per_node:
        problems.append(f"collective: expected {nodes * per_node} ranks, got {len(reports)}")
    hosts = {x.get("host") for x in reports}
    if reports and len(hosts) != nodes:
        problems.append(f"collective: ranks on {len(hosts)} node(s), expected {nodes}")
    errors = [x for x in reports if x.get("error")]
    if errors:
        problems.append(f"collective: {errors[0]['error']}")
    sums = [x.get("rank") for x in reports if not (x.get("all_reduce") or {}).get("ok", False)]
    if sums and not errors:
        problems.append(f"collective: all-reduce sum wrong on ranks {sums}")
    ddp = [x.get("rank") for x in reports if not (x.get("ddp") or {}).get("ok", False)]
    if ddp and not errors:
        problems.append(f"collective: DDP parameters differ after one step (ranks {ddp})")
    want = expected_backend(site)
    other = sorted({str(x.get("backend")) for x in reports if not x.get("error")} - want)
    if other:
        problems.append(
            f"collective: backend {', '.join(other)}, expected {'/'.join(sorted(want))}"
        )
    return problems


def _collective_line(x: dict) -> str:
    if x.get("error"):
        return f"collective rank {x.get('rank')} on {x.get('host')}: {x['error']}"
    ar, ddp = x.get("all_reduce") or {}, x.get("ddp") or {}
    return (
        f"collective rank {x.get('rank')}/{x.get('world')} on {x.get('host')}: "
        f"{x.get('device')} {x.get('name')} ({x.get('backend')}); all-reduce {ar.get('mb')} MB "
        f"{'ok' if ar.get('ok') else 'WRONG'} {ar.get('busbw_gbs')} GB/s bus "
        f"({ar.get('algbw_gbs')} alg); DDP step {'ok' if ddp.get('ok') else 'DIFFERS'} "
        f"{ddp.get('step_s')} s"
    )


def _wanted(labels: dict[str, str]) -> dict[str, str]:
    want = {"python": labels.get(LABEL_PYTHON, "")}
    want.update({n: labels[LABEL_PIN + n] for n in VERSIONED if LABEL_PIN + n in labels})
    return {k: v for k, v in want.items() if v}


def _http_text(status: str | None, error: str | None) -> str:
    return f"HTTP {status}" if status is not None else f"no answer ({error or '?'})"


def _fmt_time(seconds: int | None) -> str:
    if seconds is None:
        return "no limit"
    h, rest = divmod(seconds, 3600)
    return f"{h:02d}:{rest // 60:02d}:{rest % 60:02d}"


def compare_limits(
    cat: Queue | None, got: QueueLimits, word: str, selected: bool
) -> tuple[Status, str]:
    """The catalog's limits of one queue against the scheduler's: FAIL where the catalog allows
    more than the scheduler (a request the kit lets through would be refused), warn where
    they differ the safe way or the scheduler cannot be asked."""
    cat_wt = parse_walltime(cat.max_walltime) if cat and cat.max_walltime else None
    cat_nodes = cat.max_nodes if cat else None
    nodes = (
        "any number of nodes"
        if cat_nodes is None
        else f"{cat_nodes} node{'s' if cat_nodes != 1 else ''}"
    )
    said = f"catalog says {_fmt_time(cat_wt)}, {nodes}" if cat else "not in the catalog"
    if got.found is None:
        return "warn", f"{said}; the scheduler cannot be asked ({got.shown})"
    if got.found is False:
        return (
            "FAIL" if selected else "warn"
        ), f"{said}; the scheduler has no {word} {got.name} ({got.shown})"
    detail = f"{said}; scheduler says {got.shown}"
    if cat is None:
        return "warn", detail
    worse = [
        (c, s)
        for c, s in ((cat_wt, got.max_walltime), (cat_nodes, got.max_nodes))
        if s is not None and (c is None or c > s)
    ]
    if worse:
        return "FAIL", detail
    same = cat_wt == got.max_walltime and cat_nodes == got.max_nodes
    return ("ok" if same else "warn"), detail


def _rank_reports(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return sorted(out, key=lambda x: (str(x.get("host")), int(x.get("rank") or 0)))


def _rank_line(x: dict) -> str:
    env = " ".join(f"{k}={v}" for k, v in (x.get("visible") or {}).items())
    names = ", ".join(x.get("names") or []) or "-"
    rank = x.get("rank")
    local = x.get("local_rank")
    who = f"rank {rank if rank is not None else '?'}" + (
        f" (local {local})" if local is not None else ""
    )
    return (
        f"{who} on {x.get('host')}: {x.get('device')} ({x.get('backend')}), "
        f"{x.get('count')} device(s): {names}" + (f"; {env}" if env else "")
    )


_VERSIONS_PY = endpoint_env.VERSIONS_PY

_HTTP_PY = """\
import sys, urllib.error, urllib.request
url, key = sys.argv[1], "CROSSFL_" + sys.argv[2]
try:
    print("%s=%d" % (key, urllib.request.urlopen(url, timeout=20).status))
except urllib.error.HTTPError as e:
    print("%s=%d" % (key, e.code))
except Exception as e:
    print("%sERR=%s: %s" % (key, type(e).__name__, str(e)[:120].replace("\\n", " ")))
"""
