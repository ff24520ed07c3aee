"""House rules read from the source: no import circle in src/ (function-level imports and
the annotation-only ones under `if TYPE_CHECKING:` included: a circle of types is a knot
too), schedulers never import the site catalog (sites -> schedulers, one way), drivers ask the strategy through its base class and never compare its name, and
the server builds site tasks from the one client-side contract."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "crossfl"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except what sits under `if TYPE_CHECKING:` (imports for
    annotations only: never executed, so no circle at run time)."""
    found: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        found.append(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """crossfl modules ``name`` imports anywhere in its file: module or function level, and
    the annotation-only imports under `if TYPE_CHECKING:` too."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    [
                        *package.split(".")[: len(package.split(".")) - node.level + 1],
                        *([base] if base else []),
                    ]
                )
            for alias in node.names:  # `from pkg import submodule` names the submodule
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m in known and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_in_src() -> None:
    mods = modules()
    graph = {name: imports_of(name, path, set(mods)) for name, path in mods.items()}
    assert graph["crossfl.server.sync_driver"] >= {
        "crossfl.server.driver_base"
    }  # the check reads imports
    # ... the annotation-only ones too
    assert "crossfl.sites.schema" in graph["crossfl.sites.catalog_rules"]
    assert cycles(graph) == []


def test_type_checking_imports_count_for_circles(tmp_path: Path) -> None:
    """The circle check sees an import that only annotations use."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("from pkg.b import B\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import A\n"
    )
    known = {"pkg.a", "pkg.b"}
    graph = {n: imports_of(n, pkg / f"{n[4:]}.py", known) for n in known}
    assert cycles(graph) == [["pkg.a", "pkg.b"]]


def test_schedulers_never_import_the_site_catalog() -> None:
    """Dependencies run one way, sites -> schedulers: no module of crossfl.schedulers imports
    crossfl.sites (or what imports it), not even for annotations."""
    mods = modules()
    graph = {name: imports_of(name, path, set(mods)) for name, path in mods.items()}
    reach: set[str] = set()
    todo = [m for m in mods if m.startswith("crossfl.schedulers")]
    while todo:
        m = todo.pop()
        if m not in reach:
            reach.add(m)
            todo.extend(graph[m])
    assert "crossfl.schedulers.slurm" in reach
    assert not any(m.startswith("crossfl.sites") for m in reach), sorted(reach)


def test_drivers_never_compare_strategy_names() -> None:
    pattern = re.compile(r"strateg\w*\.name\s*==|==\s*[\w.]*strateg\w*\.name")
    offenders = [
        f"{p.relative_to(SRC)}:{n}"
        for p in PACKAGE.rglob("*.py")
        if "strategies" not in p.parts
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_site_tasks_are_built_from_the_contract_only() -> None:
    """No hand-written task dicts on the server: the task fields appear in one definition."""
    server = PACKAGE / "server"
    offenders = [
        f"{p.relative_to(SRC)}:{n}"
        for p in server.rglob("*.py")
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"[\"'](model_path|data_path|adapter_dtype|inline_limit_bytes)[\"']\s*:", line)
    ]
    assert offenders == []


# What the server process may load: the training stack (peft, transformers) runs at the sites.
SERVER_PROBE = """
import json, sys
from crossfl.cli import build_app
build_app()
from crossfl.client.encoding import load_records
from crossfl.server.experiment import load_experiment
from crossfl.server.lifecycle import resume_run, run_experiment
from crossfl.server.plan import plan_run
from crossfl.server.report import print_report
from crossfl.server.transport import TaskFns
from crossfl.simulate.replay import replay
exp, path = load_experiment(sys.argv[1])
plan = plan_run(exp, path)
TaskFns()
load_records(sys.argv[2], None)
print(json.dumps(sorted(m for m in ("peft", "transformers") if m in sys.modules)))
"""


def test_the_server_imports_no_training_stack(tmp_path: Path) -> None:
    """The server's entry points, and a plan resolved for a local experiment, leave peft and
    transformers unloaded: counting a site's records and naming the site functions need
    neither (tests/test_federation.py checks a whole run the same way)."""
    import json
    import os
    import subprocess
    import sys

    import yaml

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    row = {"input": "q", "output": "a", "raw_input": "q", "raw_output": "a", "task": "t"}
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({**row, "split": "train"}) + "\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        yaml.safe_dump(
            {
                "name": "probe",
                "model": {"path": str(tmp_path / "model")},
                "data": {"train": str(data), "validation": str(data)},
                "sites": [{"name": "east", "site": "local"}],
                "rounds": 1,
            }
        )
    )
    env = {**os.environ, "CROSSFL_ROOT": str(SRC.parent)}
    proc = subprocess.run(
        [sys.executable, "-c", SERVER_PROBE, str(exp), str(data)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == []


def _imports_in(path: Path, module_level_only: bool) -> set[str]:
    """Absolute module names imported in ``path`` (at run time: not under TYPE_CHECKING);
    with ``module_level_only``, only what importing the module runs (no function bodies)."""
    tree = ast.parse(path.read_text())
    nodes = _runtime_nodes(tree)
    if module_level_only:
        inside = {
            id(n)
            for f in nodes
            if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
            for n in ast.walk(f)
        }
        nodes = [n for n in nodes if id(n) not in inside]
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def test_the_worker_image_installs_what_the_client_imports() -> None:
    """requirements/worker.txt, after the endpoint's own packages, names exactly the
    distributions the client package imports (its functions run in the image), with the crossfl
    modules it loads; torch is installed first, from the vendor's channel."""
    import importlib.metadata
    import sys

    mods = modules()
    seen: set[str] = set()
    third: set[str] = set()
    todo = [m for m in mods if m.startswith("crossfl.client")]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        found = _imports_in(mods[name], module_level_only=not name.startswith("crossfl.client"))
        found |= {".".join(parts[:i]) for i in range(1, len(parts))}  # parent packages run too
        for imp in found:
            if imp.split(".")[0] == "crossfl":
                todo.extend(m for m in (imp, imp.rpartition(".")[0]) if m in mods)
            elif imp.split(".")[0] not in sys.stdlib_module_names:
                third.add(imp.split(".")[0])
    assert "crossfl.data.chem" not in seen  # RDKit's builder stays out of the image
    dists = importlib.metadata.packages_distributions()
    imported = {
        dist.lower()
        for top in third - {"oneccl_bindings_for_pytorch"}  # Intel's XPU images carry it
        for dist in dists.get(top, [top])
    }
    worker = {
        line.strip().lower()
        for line in (SRC.parent / "requirements" / "worker.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    endpoint = {"globus-compute-endpoint", "parsl", "dill"}
    assert worker - endpoint == imported - {"torch"}


def test_the_product_carries_no_test_harness() -> None:
    """The image-check harness and its Apptainer stand-in (mmdebstrap, bubblewrap) live in
    testkit/, outside the installed package: nothing under src/ imports testkit or starts
    those tools."""
    mods = modules()
    assert not {
        "crossfl.images.rootfs",
        "crossfl.images.check",
        "crossfl.server.image_check",
    } & set(mods)
    offenders = [
        f"{p.relative_to(SRC)}:{n}"
        for p in PACKAGE.rglob("*.py")
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"\b(import testkit|from testkit)\b|[\"'](bwrap|mmdebstrap)[\"']", line)
    ]
    assert offenders == []
    assert (SRC.parent / "testkit" / "rootfs.py").is_file()


# ------------------------------------------------------------- one home per concept

# Each concept is written in one module; a second copy elsewhere in src/ could drift from it
# (tests/test_one_home.py checks that the former callers still agree through the one home).
ONE_HOME = {
    "peft's LoraConfig built": (r"\bLoraConfig\(", "crossfl.client.contract"),
    "peft's LoRA keys named": (r"\blora_alpha\b", "crossfl.client.contract"),
    "a leading ~ rewritten to $HOME": (
        r"""startswith\(\(?["']~|replace\(\s*["']~|["']\$HOME/?["']\s*\+""",
        "crossfl.quoting",
    ),
    "a shell-quoting function": (r"^def quote\b", "crossfl.quoting"),
    "a staleness formula chosen": (
        r"""==\s*["'](harmonic|exponential|polynomial|hinge)["']""",
        "crossfl.server.strategies.staleness",
    ),
    "a tagged answer parsed": (r"</\(\?P=", "crossfl.data.smolinstruct"),
    "a TrainResult built": (r"(?<!class )\bTrainResult\(", "crossfl.client.contract"),
    "a file staged or fsynced (JSONL included)": (r"\bos\.fsync\(|\bmkstemp\(", "crossfl.atomic"),
}


def homes_of(pattern: str) -> set[str]:
    """The modules of src/ whose text matches ``pattern``."""
    rx = re.compile(pattern, re.M)
    return {name for name, path in modules().items() if rx.search(path.read_text())}


def test_each_concept_has_one_home() -> None:
    found = {concept: homes_of(pattern) for concept, (pattern, _) in ONE_HOME.items()}
    assert found == {concept: {home} for concept, (_, home) in ONE_HOME.items()}


def test_one_home_patterns_catch_a_second_copy() -> None:
    """The patterns above see the copies that were merged into one home."""
    copies = {
        "peft's LoraConfig built": "return LoraConfig(r=self.r)",
        "peft's LoRA keys named": '"lora_alpha": lora.alpha,',
        "a leading ~ rewritten to $HOME": 'root = raw_root.replace("~/", "$HOME/", 1)',
        "a shell-quoting function": "def quote(word: str) -> str:",
        "a staleness formula chosen": 'if self.params.staleness_fn == "harmonic":',
        "a tagged answer parsed": r'_TAGGED = re.compile(r"<(?P<tag>[A-Z_]+)>(.*?)</(?P=tag)>")',
        "a TrainResult built": "    return TrainResult(adapter=adapter)",
        "a file staged or fsynced (JSONL included)": "            os.fsync(fh.fileno())",
    }
    assert set(copies) == set(ONE_HOME)
    for concept, text in copies.items():
        assert re.search(ONE_HOME[concept][0], text, re.M), concept


def test_no_two_classes_share_a_name() -> None:
    """A class name means one thing across src/ (no three `Outcome`s to tell apart)."""
    where: dict[str, list[str]] = {}
    for name, path in modules().items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                where.setdefault(node.name, []).append(name)
    assert {n: m for n, m in where.items() if len(m) > 1} == {}
