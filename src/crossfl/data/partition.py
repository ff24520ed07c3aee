"""Split one training set across federated sites: each record goes to exactly one site.

Schemes (all deterministic for a given seed; a different seed gives a different split):

* ``iid``: a seeded shuffle dealt round-robin, so site sizes differ by at most one.
* ``by_task``: non-IID by task. Tasks (sorted by name) get owners: with at most as many sites
  as tasks, task *j* belongs to site *j mod n_sites* (a site may own several tasks); with more
  sites than tasks, site *i* owns task *i mod n_tasks* (a task may have several owners, who
  share it evenly). ``own_fraction`` (default 0.9) of every task goes to its owner(s); the rest
  is spread evenly over all sites, so each site still sees a little of every task.
* ``dirichlet``: per task, site proportions drawn from Dir(alpha) (numpy); small alpha gives
  strong skew, large alpha approaches IID.

Every site receives at least one record: a site left empty by the draw takes one record from
the largest site. Fewer records than sites is a ``UserError``.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from pydantic import TypeAdapter, ValidationError

from crossfl.data.smolinstruct import (
    Record,
    load_jsonl,
    write_json,
    write_jsonl_set,
)
from crossfl.errors import UserError

Scheme = Literal["iid", "by_task", "dirichlet"]
SCHEMES: tuple[str, ...] = get_args(Scheme)
BY_TASK_OWN_FRACTION = 0.9
MANIFEST = "partition.json"
_SCHEME_ADAPTER: TypeAdapter[Scheme] = TypeAdapter(Scheme)
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def parse_scheme(value: str) -> Scheme:
    """`value` as a Scheme; anything else is a `UserError` listing the allowed names."""
    try:
        return _SCHEME_ADAPTER.validate_python(value)
    except ValidationError:
        raise UserError(
            f"unknown partition scheme {value!r}",
            field="scheme",
            fix="use one of " + ", ".join(SCHEMES),
        ) from None


def check_sites(sites: Sequence[str]) -> list[str]:
    """Site names: at least one, unique, usable as file names."""
    names = [str(site).strip() for site in sites]
    if not names or not all(names):
        raise UserError(
            "no site names given (or an empty one)",
            field="sites",
            fix="pass comma-separated names, e.g. --sites alpha,beta,gamma",
        )
    bad = [name for name in names if not _SITE_NAME.match(name)]
    if bad:
        raise UserError(
            f"site name(s) not usable as file names: {', '.join(bad)}",
            field="sites",
            fix="use letters, digits, '.', '_' and '-'",
        )
    duplicated = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicated:
        raise UserError(
            f"site name(s) repeated: {', '.join(duplicated)}",
            field="sites",
            fix="give every site once",
        )
    return names


def _check_alpha(alpha: float) -> None:
    if not (math.isfinite(alpha) and alpha > 0):
        raise UserError(
            f"alpha must be a positive number, got {alpha}",
            field="alpha",
            fix="e.g. --alpha 0.5 (smaller = more skewed)",
        )


def partition(
    records: list[Record],
    sites: list[str],
    scheme: Scheme,
    *,
    seed: int = 0,
    alpha: float = 0.5,
    own_fraction: float = BY_TASK_OWN_FRACTION,
) -> dict[str, list[Record]]:
    """Assign every record to exactly one site; returns site -> its records (in input order)."""
    scheme = parse_scheme(scheme)
    names = check_sites(sites)
    if len(records) < len(names):
        raise UserError(
            f"{len(records)} record(s) cannot give each of {len(names)} sites one",
            field="sites",
            fix="use fewer sites or a larger training set",
        )
    if seed < 0:
        raise UserError(
            f"seed must be a non-negative integer, got {seed}", field="seed", fix="e.g. --seed 0"
        )
    if not 0.0 <= own_fraction <= 1.0:
        raise UserError(
            f"own_fraction must be within [0, 1], got {own_fraction}", field="own_fraction"
        )
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        buckets = _iid(len(records), len(names), rng)
    elif scheme == "by_task":
        buckets = _by_task(records, len(names), rng, own_fraction)
    else:
        _check_alpha(alpha)
        buckets = _dirichlet(records, len(names), rng, alpha)
    _fill_empty(buckets)
    return {
        name: [records[i] for i in sorted(bucket)]
        for name, bucket in zip(names, buckets, strict=False)
    }


def _task_groups(records: Sequence[Record]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        groups[record.task].append(index)
    return {task: groups[task] for task in sorted(groups)}


def _iid(count: int, n_sites: int, rng: np.random.Generator) -> list[list[int]]:
    order = rng.permutation(count).tolist()
    return [order[site::n_sites] for site in range(n_sites)]


def task_owners(tasks: Sequence[str], n_sites: int) -> dict[str, list[int]]:
    """Which site indices own each task under `by_task` (see the module docstring)."""
    if n_sites <= len(tasks):
        return {task: [j % n_sites] for j, task in enumerate(tasks)}
    return {
        task: [i for i in range(n_sites) if i % len(tasks) == j] for j, task in enumerate(tasks)
    }


def _by_task(
    records: Sequence[Record], n_sites: int, rng: np.random.Generator, own_fraction: float
) -> list[list[int]]:
    buckets: list[list[int]] = [[] for _ in range(n_sites)]
    groups = _task_groups(records)
    owners = task_owners(list(groups), n_sites)
    spread = 0
    for task, indices in groups.items():
        order = [indices[i] for i in rng.permutation(len(indices))]
        keep = round(own_fraction * len(order))
        for k, index in enumerate(order[:keep]):
            buckets[owners[task][k % len(owners[task])]].append(index)
        for index in order[keep:]:
            buckets[spread % n_sites].append(index)
            spread += 1
    return buckets


def _dirichlet(
    records: Sequence[Record], n_sites: int, rng: np.random.Generator, alpha: float
) -> list[list[int]]:
    buckets: list[list[int]] = [[] for _ in range(n_sites)]
    for indices in _task_groups(records).values():
        shares = rng.dirichlet(np.full(n_sites, alpha))
        order = [indices[i] for i in rng.permutation(len(indices))]
        cuts = np.floor(np.cumsum(shares)[:-1] * len(order)).astype(int)
        for site, part in enumerate(np.split(np.asarray(order, dtype=np.int64), cuts)):
            buckets[site].extend(part.tolist())
    return buckets


def _fill_empty(buckets: list[list[int]]) -> None:
    """Give every empty bucket one record from the currently largest bucket."""
    for bucket in buckets:
        if not bucket:
            largest = max(buckets, key=len)
            largest.sort()
            bucket.append(largest.pop())


def task_counts(parts: dict[str, list[Record]]) -> dict[str, dict[str, int]]:
    """site -> task -> number of records (tasks sorted by name)."""
    return {
        site: dict(sorted(Counter(r.task for r in recs).items())) for site, recs in parts.items()
    }


def write_partitions(
    train_path: Path,
    sites: list[str],
    out_dir: Path,
    scheme: Scheme | str,
    seed: int = 0,
    alpha: float = 0.5,
) -> dict[str, Path]:
    """Partition `train_path` and write out_dir/<site>.jsonl (+ partition.json), atomically.

    Only records of split `train` are used, so pointing at a whole dataset directory never
    leaks validation or test records into the sites' training data.

    Every site file is staged first and moved into place only when all are written.
    """
    chosen = parse_scheme(scheme)
    names = check_sites(sites)
    if chosen == "dirichlet":
        _check_alpha(alpha)
    records = load_jsonl(Path(train_path), splits={"train"})
    parts = partition(records, names, chosen, seed=seed, alpha=alpha)
    out_dir = Path(out_dir)
    paths = {site: out_dir / f"{site}.jsonl" for site in names}
    write_jsonl_set({path: parts[site] for site, path in paths.items()})
    _write_manifest(out_dir, Path(train_path), chosen, seed, alpha, parts)
    return paths


def _write_manifest(
    out_dir: Path,
    train_path: Path,
    scheme: Scheme,
    seed: int,
    alpha: float,
    parts: dict[str, list[Record]],
) -> None:
    manifest = {
        "source": train_path.name,
        "scheme": scheme,
        "seed": seed,
        "alpha": alpha if scheme == "dirichlet" else None,
        "own_fraction": BY_TASK_OWN_FRACTION if scheme == "by_task" else None,
        "records": {site: len(recs) for site, recs in parts.items()},
        "tasks": task_counts(parts),
    }
    write_json(manifest, out_dir / MANIFEST)
