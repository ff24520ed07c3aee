"""The built-in chemistry instruction set, made offline from the molecules RDKit ships.

Source: RDKit's NCI sample (`RDDataDir/NCI/first_5K.smi`, about 5,000 SMILES). The SMILES are
shuffled by the seed; every one RDKit can parse is canonicalized (duplicates dropped; with
--max-molecules N, the first N kept), assigned to exactly one split (80/10/10 in shuffled
order), and turned into one record per task, phrased the SMolInstruct way:
`<SMILES> ... </SMILES>` in the question, `<MOLFORMULA> ... </MOLFORMULA>` or
`<NUMBER> ... </NUMBER>` in the answer. Answers are computed by RDKit, so they are exact.

Questions are kept short on purpose: the local demo trains a tiny model on two CPU cores.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import rdkit
from pydantic import BaseModel
from rdkit import Chem, RDConfig, rdBase
from rdkit.Chem import Crippen, Descriptors, rdMolDescriptors

from crossfl.data.smolinstruct import (
    SPLITS,
    Record,
    Split,
    write_json,
    write_jsonl_set,
)
from crossfl.errors import UserError

NCI_RELATIVE = Path("NCI") / "first_5K.smi"
SPLIT_FRACTIONS: dict[Split, float] = {"train": 0.8, "validation": 0.1, "test": 0.1}
INFO_FILE = "dataset_info.json"


def _number(value: float, digits: int) -> str:
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


@dataclass(frozen=True)
class ChemTask:
    """One task: a question template (with `{smiles}`), the answer tag and how to compute it."""

    name: str
    question: str
    tag: str
    compute: Callable[[Chem.Mol], str]

    def record(self, smiles: str, mol: Chem.Mol, split: Split) -> Record:
        answer = self.compute(mol)
        return Record(
            input=self.question.format(smiles=f"<SMILES> {smiles} </SMILES>"),
            output=f"<{self.tag}> {answer} </{self.tag}>",
            raw_input=smiles,
            raw_output=answer,
            task=self.name,
            split=split,
        )


TASKS: dict[str, ChemTask] = {
    task.name: task
    for task in (
        ChemTask(
            "name_conversion-s2f",
            "What is the molecular formula of {smiles} ?",
            "MOLFORMULA",
            rdMolDescriptors.CalcMolFormula,
        ),
        ChemTask(
            "property_prediction-mw",
            "What is the molecular weight of {smiles} ?",
            "NUMBER",
            lambda mol: _number(Descriptors.MolWt(mol), 2),  # type: ignore[attr-defined]  # rdkit-stubs omit MolWt (a module-level lambda)
        ),
        ChemTask(
            "property_prediction-logp",
            "What is the Crippen logP of {smiles} ?",
            "NUMBER",
            lambda mol: _number(Crippen.MolLogP(mol), 2),  # type: ignore[attr-defined]  # rdkit-stubs omit MolLogP (bound at import)
        ),
        ChemTask(
            "property_prediction-tpsa",
            "What is the TPSA of {smiles} ?",
            "NUMBER",
            lambda mol: _number(rdMolDescriptors.CalcTPSA(mol), 2),
        ),
        ChemTask(
            "property_prediction-rings",
            "How many rings does {smiles} have?",
            "NUMBER",
            lambda mol: str(rdMolDescriptors.CalcNumRings(mol)),
        ),
    )
}


class BuildSummary(BaseModel):
    """What `build_chem` wrote: files, molecules per split, records per task and split.

    `read` counts the SMILES examined (all of the source, unless --max-molecules stopped early);
    each was kept or dropped as unparseable, a duplicate or too long.
    """

    out_dir: Path
    files: dict[str, Path]
    source: str
    seed: int
    molecules: dict[str, int]
    records: dict[str, dict[str, int]]
    read: int
    unparseable: int
    duplicates: int
    too_long: int
    seconds: float


def nci_smiles_path() -> Path:
    """RDKit's NCI SMILES file (about 5,000 molecules)."""
    data_dir = Path(RDConfig.RDDataDir)
    path = data_dir / NCI_RELATIVE
    if path.is_file():
        return path
    found = sorted(data_dir.glob("NCI/*.smi"))
    if found:
        return found[0]
    raise UserError(
        "RDKit's NCI SMILES file is missing",
        file=path,
        fix="reinstall rdkit (`pip install -c requirements/constraints.txt rdkit`)",
    )


def read_smiles_file(path: Path) -> list[str]:
    """First column of a .smi file (SMILES, then an optional id), blank/comment lines skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UserError(
            f"cannot read SMILES file: {exc.strerror}", file=path, fix="check the path"
        ) from None
    except UnicodeDecodeError:
        raise UserError(
            "SMILES file is not UTF-8 text",
            file=path,
            fix="one SMILES per line, optionally followed by an id",
        ) from None
    return [line.split()[0] for line in lines if line.strip() and not line.startswith("#")]


@dataclass
class ParsedMolecules:
    molecules: list[tuple[str, Chem.Mol]]
    examined: int = 0
    unparseable: int = 0
    duplicates: int = 0
    too_long: int = 0


def parse_molecules(
    smiles: Iterable[str], *, max_smiles_length: int | None = None, limit: int | None = None
) -> ParsedMolecules:
    """Canonical SMILES + molecule for every parseable, new input, in input order, stopping
    once `limit` molecules are kept; counts what was examined and dropped."""
    parsed = ParsedMolecules(molecules=[])
    seen: set[str] = set()
    rdBase.DisableLog("rdApp.*")
    try:
        for text in smiles:
            if limit is not None and len(parsed.molecules) >= limit:
                break
            parsed.examined += 1
            mol = Chem.MolFromSmiles(text)
            if mol is None:
                parsed.unparseable += 1
                continue
            canonical = Chem.MolToSmiles(mol)
            # answers come from the canonical SMILES itself, so anyone re-parsing raw_input
            # gets bit-identical values (atom order changes floating-point sums)
            mol = Chem.MolFromSmiles(canonical)
            if mol is None:
                parsed.unparseable += 1
            elif canonical in seen:
                parsed.duplicates += 1
            elif max_smiles_length is not None and len(canonical) > max_smiles_length:
                parsed.too_long += 1
            else:
                seen.add(canonical)
                parsed.molecules.append((canonical, mol))
    finally:
        rdBase.EnableLog("rdApp.*")
    return parsed


def split_sizes(total: int) -> dict[Split, int]:
    """80/10/10 by default; validation and test get at least one molecule once total >= 3."""
    if total < 1:
        raise UserError(
            "no molecules left to split",
            field="max-molecules",
            fix="allow more molecules (a larger --max-molecules/--max-smiles-length)",
        )
    held: dict[Split, int] = {s: round(total * SPLIT_FRACTIONS[s]) for s in ("validation", "test")}
    if total >= 3:
        held = {s: max(1, n) for s, n in held.items()}
    else:
        held = {"validation": 0, "test": 0}
    return {"train": total - held["validation"] - held["test"], **held}


def shuffled(items: Sequence[str], seed: int) -> list[str]:
    """A seeded shuffle (the same seed and source give the same order on every machine)."""
    order = list(items)
    random.Random(seed).shuffle(order)
    return order


def split_molecules(
    molecules: Sequence[tuple[str, Chem.Mol]],
) -> dict[Split, list[tuple[str, Chem.Mol]]]:
    """Cut (already shuffled) molecules into train/validation/test: disjoint by molecule."""
    sizes = split_sizes(len(molecules))
    result: dict[Split, list[tuple[str, Chem.Mol]]] = {}
    start = 0
    for split in SPLITS:
        result[split] = list(molecules[start : start + sizes[split]])
        start += sizes[split]
    return result


def resolve_tasks(names: Iterable[str] | None) -> list[ChemTask]:
    """The chosen tasks in the fixed catalog order; an unknown name is a `UserError`."""
    if names is None:
        return list(TASKS.values())
    wanted = [name.strip() for name in names if name.strip()]
    unknown = sorted(set(wanted) - set(TASKS))
    if unknown or not wanted:
        raise UserError(
            f"unknown task(s): {', '.join(unknown) or '(none given)'}",
            field="tasks",
            fix="choose from " + ", ".join(TASKS),
        )
    return [task for name, task in TASKS.items() if name in wanted]


def make_records(
    molecules: Sequence[tuple[str, Chem.Mol]], split: Split, tasks: Sequence[ChemTask]
) -> list[Record]:
    """One record per molecule and task, molecule by molecule (tasks interleaved)."""
    return [task.record(smiles, mol, split) for smiles, mol in molecules for task in tasks]


def build_chem(
    out_dir: Path,
    *,
    seed: int = 0,
    max_molecules: int | None = None,
    tasks: Iterable[str] | None = None,
    max_smiles_length: int | None = None,
    source: Path | None = None,
) -> BuildSummary:
    """Build the chemistry set into out_dir/{train,validation,test}.jsonl (+ dataset_info.json).

    All files are staged as temp files in out_dir and moved into place only once every one is
    written; train.jsonl (the file `make data` watches) moves last. A failed build leaves the
    previous dataset, if any, untouched.
    """
    started = time.perf_counter()
    _check_limits(max_molecules, max_smiles_length)
    chosen = resolve_tasks(tasks)
    source = Path(source) if source is not None else nci_smiles_path()
    raw = shuffled(read_smiles_file(source), seed)
    parsed = parse_molecules(raw, max_smiles_length=max_smiles_length, limit=max_molecules)
    splits = split_molecules(parsed.molecules)
    records = {split: make_records(mols, split, chosen) for split, mols in splits.items()}
    out_dir = Path(out_dir)
    files = _write_dataset(out_dir, records)
    summary = BuildSummary(
        out_dir=out_dir,
        files=dict(files),
        source=_source_label(source),
        seed=seed,
        molecules={split: len(mols) for split, mols in splits.items()},
        records=_count(records, chosen),
        read=parsed.examined,
        unparseable=parsed.unparseable,
        duplicates=parsed.duplicates,
        too_long=parsed.too_long,
        seconds=round(time.perf_counter() - started, 3),
    )
    _write_info(out_dir, summary)
    return summary


def _check_limits(max_molecules: int | None, max_smiles_length: int | None) -> None:
    if max_molecules is not None and max_molecules < 1:
        raise UserError(
            f"must be at least 1, got {max_molecules}",
            field="max-molecules",
            fix="pass a positive number or leave it out for all molecules",
        )
    if max_smiles_length is not None and max_smiles_length < 1:
        raise UserError(
            f"must be at least 1, got {max_smiles_length}",
            field="max-smiles-length",
            fix="pass a positive number or leave it out",
        )


def _write_dataset(out_dir: Path, records: dict[Split, list[Record]]) -> dict[Split, Path]:
    # train.jsonl (what `make data` watches) moves into place last
    order: tuple[Split, ...] = ("validation", "test", "train")
    write_jsonl_set({out_dir / f"{split}.jsonl": records[split] for split in order})
    return {split: out_dir / f"{split}.jsonl" for split in SPLITS}


def _count(
    records: dict[Split, list[Record]], tasks: Sequence[ChemTask]
) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {t.name: {s: 0 for s in SPLITS} for t in tasks}
    for split, items in records.items():
        for record in items:
            counts[record.task][split] += 1
    return counts


def _source_label(source: Path) -> str:
    try:
        return (
            "rdkit:" + source.resolve().relative_to(Path(RDConfig.RDDataDir).resolve()).as_posix()
        )
    except ValueError:
        return source.name


def _write_info(out_dir: Path, summary: BuildSummary) -> None:
    info = {
        "format": "SMolInstruct JSONL",
        "source": summary.source,
        "rdkit": rdkit.__version__,
        "seed": summary.seed,
        "split_fractions": SPLIT_FRACTIONS,
        "molecules": summary.molecules,
        "records": summary.records,
        "tasks": {
            name: {"question": TASKS[name].question, "tag": TASKS[name].tag}
            for name in summary.records
        },
    }
    write_json(info, out_dir / INFO_FILE)
