"""`crossfl data ...`: build the chemistry set and partition a training set across sites.

Mistakes raise `UserError`; the main CLI prints them as one line and exits 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from crossfl.data.partition import MANIFEST, SCHEMES, parse_scheme, write_partitions
from crossfl.data.smolinstruct import SPLITS

console = Console()


def _csv(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def build_chem_command(
    out: Annotated[Path, typer.Option("--out", help="Directory for train/validation/test.jsonl.")],
    seed: Annotated[int, typer.Option(help="Seed of the molecule split.")] = 0,
    max_molecules: Annotated[
        int | None,
        typer.Option("--max-molecules", help="Keep at most N molecules (a seeded sample)."),
    ] = None,
    tasks: Annotated[
        str | None, typer.Option(help="Comma-separated task names (default: all).")
    ] = None,
    max_smiles_length: Annotated[
        int | None,
        typer.Option(
            "--max-smiles-length", help="Drop molecules whose canonical SMILES is longer."
        ),
    ] = None,
) -> None:
    """Build the SMolInstruct-format chemistry set from the NCI molecules RDKit ships."""
    from crossfl.extras import require

    require("data", "crossfl data build-chem")
    from crossfl.data.chem import build_chem

    with console.status("building the chemistry set with RDKit ..."):
        summary = build_chem(
            out,
            seed=seed,
            max_molecules=max_molecules,
            tasks=_csv(tasks),
            max_smiles_length=max_smiles_length,
        )
    table = Table(title=f"{summary.out_dir} (seed {summary.seed}, source {summary.source})")
    table.add_column("task")
    for split in SPLITS:
        table.add_column(split, justify="right")
    for task, counts in summary.records.items():
        table.add_row(task, *(str(counts[split]) for split in SPLITS))
    table.add_row("[bold]molecules[/]", *(str(summary.molecules[s]) for s in SPLITS))
    console.print(table)
    console.print(
        f"read {summary.read} SMILES: {summary.unparseable} unparseable, "
        f"{summary.duplicates} duplicates, {summary.too_long} too long skipped; "
        f"built in {summary.seconds:.2f} s"
    )


def partition_command(
    train: Annotated[Path, typer.Option("--train", help="Training JSONL file (or directory).")],
    sites: Annotated[str, typer.Option("--sites", help="Comma-separated site names.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for <site>.jsonl files.")],
    scheme: Annotated[str, typer.Option(help="One of: " + ", ".join(SCHEMES))] = "iid",
    seed: Annotated[int, typer.Option(help="Seed of the partition.")] = 0,
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration (dirichlet only).")] = 0.5,
) -> None:
    """Split a training set across sites: every record goes to exactly one site."""
    chosen = parse_scheme(scheme)
    names = _csv(sites) or []
    with console.status(f"partitioning {train} ({chosen}) ..."):
        paths = write_partitions(train, names, out, chosen, seed=seed, alpha=alpha)
    manifest = json.loads((Path(out) / MANIFEST).read_text(encoding="utf-8"))
    counts: dict[str, dict[str, int]] = manifest["tasks"]
    tasks = sorted({task for per_site in counts.values() for task in per_site})
    table = Table(
        title=f"{out}: scheme {chosen}, seed {seed}"
        + (f", alpha {alpha}" if chosen == "dirichlet" else "")
    )
    table.add_column("task")
    for site in paths:
        table.add_column(site, justify="right")
    for task in tasks:
        table.add_row(task, *(str(counts[site].get(task, 0)) for site in paths))
    table.add_row("[bold]total[/]", *(str(manifest["records"][site]) for site in paths))
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add the `data` command group to the main app."""
    data_app = typer.Typer(
        no_args_is_help=True,
        add_completion=False,
        help="Datasets: build the RDKit chemistry set, partition across sites.",
    )
    data_app.command("build-chem")(build_chem_command)
    data_app.command("partition")(partition_command)
    app.add_typer(data_app, name="data")
