"""`crossfl model ...`: the offline tiny base model for demos and tests.

Mistakes raise `UserError`; the main CLI prints them as one line and exits 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

console = Console()


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def build_tiny_command(
    data: Annotated[Path, typer.Option("--data", help="Training JSONL (SMolInstruct format).")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the model + tokenizer.")],
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="BPE vocabulary size.")] = 1000,
    hidden_size: Annotated[int, typer.Option("--hidden-size")] = 128,
    layers: Annotated[int, typer.Option("--layers")] = 4,
    heads: Annotated[int, typer.Option("--heads")] = 4,
    intermediate_size: Annotated[int, typer.Option("--intermediate-size")] = 256,
    pretrain_steps: Annotated[
        int,
        typer.Option(
            "--pretrain-steps", help="Plain-LM steps on the dataset text (0: random init)."
        ),
    ] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the init and the pre-training.")] = 0,
    threads: Annotated[
        int, typer.Option(help="torch threads; more than 1 only pays on otherwise idle cores.")
    ] = 1,
) -> None:
    """Build a small Llama-architecture model and a BPE tokenizer trained on DATA, saved with
    save_pretrained so AutoModelForCausalLM/AutoTokenizer load it like any checkpoint."""
    from crossfl.extras import require

    require("train", "crossfl model build-tiny")
    from crossfl.tiny_model import build_tiny, make_spec

    spec = make_spec(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_layers=layers,
        num_heads=heads,
        intermediate_size=intermediate_size,
        pretrain_steps=pretrain_steps,
        seed=seed,
        threads=threads,
    )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        ids: dict[str, TaskID] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in ids:
                ids[stage] = bar.add_task(stage, total=total)
            bar.update(ids[stage], completed=done)

        summary = build_tiny(data, out, spec, progress)
    loss = ""
    if summary.pretrain_first_loss is not None:
        loss = (
            f", pre-train loss {summary.pretrain_first_loss:.2f} -> "
            f"{summary.pretrain_last_loss:.2f} in {summary.pretrain_steps} steps"
        )
    console.print(
        f"[green]built[/] {summary.out}: {summary.parameters:,} parameters, "
        f"vocab {summary.vocab_size}, {_size(summary.bytes_on_disk)} on disk{loss}; "
        f"{summary.seconds:.1f} s",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add the `model` command group to the main app."""
    model_app = typer.Typer(
        no_args_is_help=True,
        add_completion=False,
        help="Base models: build the offline tiny Llama for demos and tests.",
    )
    model_app.command("build-tiny")(build_tiny_command)
    app.add_typer(model_app, name="model")
