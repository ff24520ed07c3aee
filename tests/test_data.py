"""crossfl.data: the RDKit chemistry set, the SMolInstruct loader, the partitioners, the CLI."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest
import typer
from rdkit import Chem
from rdkit.Chem import Crippen, Descriptors, rdMolDescriptors
from typer.testing import CliRunner

from crossfl import atomic
from crossfl.cli.data import register
from crossfl.data import chem
from crossfl.data.chem import TASKS, build_chem
from crossfl.data.partition import SCHEMES, partition, task_counts, write_partitions
from crossfl.data.smolinstruct import (
    RECORD_FIELDS,
    Record,
    answer_of,
    load_jsonl,
    write_jsonl,
)
from crossfl.errors import UserError

SPLIT_NAMES = ("train", "validation", "test")


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def full_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, chem.BuildSummary]:
    """The whole built-in set, built once for this module (a few seconds)."""
    out = tmp_path_factory.mktemp("chem-full")
    return out, build_chem(out, seed=0)


@pytest.fixture(scope="module")
def splits(full_set: tuple[Path, chem.BuildSummary]) -> dict[str, list[Record]]:
    out, _ = full_set
    return {split: load_jsonl(out / f"{split}.jsonl") for split in SPLIT_NAMES}


def synthetic(per_task: dict[str, int]) -> list[Record]:
    """Unique records (raw_input is unique) for partition tests."""
    records = []
    for task, count in per_task.items():
        for i in range(count):
            smiles = f"C{task}{i}"
            records.append(
                Record(
                    input=f"q <SMILES> {smiles} </SMILES>",
                    output="<NUMBER> 1 </NUMBER>",
                    raw_input=smiles,
                    raw_output="1",
                    task=task,
                    split="train",
                )
            )
    return records


def ids(records: list[Record]) -> list[tuple[str, str]]:
    return [(r.task, r.raw_input) for r in records]


def own_share(parts: dict[str, list[Record]], owned: dict[str, set[str]]) -> dict[str, float]:
    """Fraction of each site's records that belong to the tasks it owns."""
    return {
        site: sum(r.task in owned[site] for r in recs) / len(recs) for site, recs in parts.items()
    }


def max_task_share(parts: dict[str, list[Record]]) -> float:
    """Mean over sites of the largest single-task share (1/n_tasks when IID, 1.0 when skewed)."""
    shares = [max(Counter(r.task for r in recs).values()) / len(recs) for recs in parts.values()]
    return sum(shares) / len(shares)


def data_app() -> typer.Typer:
    app = typer.Typer(add_completion=False)

    @app.callback()
    def _root() -> None:
        """test root"""

    register(app)
    return app


def run_like_main(args: list[str]) -> tuple[int, str]:
    """What crossfl.cli.main does: UserError -> one line, exit code 2."""
    try:
        data_app()(args, standalone_mode=False)
    except UserError as exc:
        return 2, f"error: {exc.render()}"
    return 0, ""


# ---------------------------------------------------------------- building the chemistry set


def test_build_uses_rdkit_nci_molecules(full_set: tuple[Path, chem.BuildSummary]) -> None:
    out, summary = full_set
    assert summary.source == "rdkit:NCI/first_5K.smi"
    assert summary.read > 4900
    total = sum(summary.molecules.values())
    assert total + summary.unparseable + summary.duplicates + summary.too_long == summary.read
    assert total > 4800
    assert summary.unparseable > 0  # the NCI file holds a few SMILES RDKit rejects
    assert summary.molecules["train"] == pytest.approx(0.8 * total, abs=2)
    assert summary.molecules["validation"] == pytest.approx(0.1 * total, abs=2)
    assert {p.name for p in out.iterdir()} == {
        "train.jsonl",
        "validation.jsonl",
        "test.jsonl",
        "dataset_info.json",
    }
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["records"] == summary.records


def test_every_record_has_the_six_fields(full_set: tuple[Path, chem.BuildSummary]) -> None:
    out, summary = full_set
    for split in SPLIT_NAMES:
        lines = (out / f"{split}.jsonl").read_text().splitlines()
        assert len(lines) == summary.molecules[split] * len(TASKS)
        for line in lines[:50] + lines[-50:]:
            data = json.loads(line)
            assert list(data) == list(RECORD_FIELDS)
            assert data["split"] == split
            assert data["raw_input"] and data["raw_output"]


def test_formulas_match_rdkit(splits: dict[str, list[Record]]) -> None:
    records = [r for recs in splits.values() for r in recs if r.task == "name_conversion-s2f"]
    sample = random.Random(1).sample(records, 300)
    for record in sample:
        mol = Chem.MolFromSmiles(record.raw_input)
        assert mol is not None
        assert record.raw_output == rdMolDescriptors.CalcMolFormula(mol)
        assert record.output == f"<MOLFORMULA> {record.raw_output} </MOLFORMULA>"
        assert f"<SMILES> {record.raw_input} </SMILES>" in record.input
        assert answer_of(record.output) == record.raw_output


def test_properties_match_rdkit(splits: dict[str, list[Record]]) -> None:
    expected = {
        "property_prediction-mw": Descriptors.MolWt,
        "property_prediction-logp": Crippen.MolLogP,
        "property_prediction-tpsa": rdMolDescriptors.CalcTPSA,
        "property_prediction-rings": lambda m: rdMolDescriptors.CalcNumRings(m),
    }
    sample = random.Random(2).sample(splits["test"], 300)
    checked = Counter()
    for record in sample:
        if record.task in expected:
            value = expected[record.task](Chem.MolFromSmiles(record.raw_input))
            assert float(record.raw_output) == pytest.approx(value, abs=0.005 + 1e-9)
            assert len(record.raw_output.partition(".")[2]) in (0, 2)
            assert record.output == f"<NUMBER> {record.raw_output} </NUMBER>"
            checked[record.task] += 1
    assert set(checked) == set(expected)


def test_splits_are_disjoint_by_molecule(splits: dict[str, list[Record]]) -> None:
    molecules = {split: {r.raw_input for r in recs} for split, recs in splits.items()}
    assert not molecules["train"] & molecules["validation"]
    assert not molecules["train"] & molecules["test"]
    assert not molecules["validation"] & molecules["test"]
    # every molecule carries every task, once
    per_molecule = Counter((r.raw_input, r.task) for recs in splits.values() for r in recs)
    assert set(per_molecule.values()) == {1}
    assert len(per_molecule) == sum(len(m) for m in molecules.values()) * len(TASKS)


def test_instructions_are_short(splits: dict[str, list[Record]]) -> None:
    extra = [len(r.input) - len(r.raw_input) for r in splits["validation"]]
    assert max(extra) <= 60
    assert max(len(r.output) - len(r.raw_output) for r in splits["validation"]) <= 30


def test_build_is_deterministic_by_seed(tmp_path: Path) -> None:
    build_chem(tmp_path / "a", seed=3, max_molecules=40)
    build_chem(tmp_path / "b", seed=3, max_molecules=40)
    build_chem(tmp_path / "c", seed=4, max_molecules=40)
    for split in SPLIT_NAMES:
        a = (tmp_path / "a" / f"{split}.jsonl").read_bytes()
        assert a == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
    assert (tmp_path / "a" / "train.jsonl").read_bytes() != (
        tmp_path / "c" / "train.jsonl"
    ).read_bytes()


def test_max_molecules_and_task_choice(tmp_path: Path) -> None:
    summary = build_chem(
        tmp_path,
        seed=0,
        max_molecules=30,
        tasks=["property_prediction-logp", "name_conversion-s2f"],
    )
    assert summary.molecules == {"train": 24, "validation": 3, "test": 3}
    assert list(summary.records) == ["name_conversion-s2f", "property_prediction-logp"]
    assert len(load_jsonl(tmp_path)) == 60
    with pytest.raises(UserError, match="choose from"):
        build_chem(tmp_path, tasks=["name_conversion-i2s"])
    with pytest.raises(UserError, match="max-molecules"):
        build_chem(tmp_path, max_molecules=0)


def test_max_smiles_length_drops_long_molecules(tmp_path: Path) -> None:
    summary = build_chem(tmp_path, max_molecules=200, max_smiles_length=20)
    records = load_jsonl(tmp_path)
    assert sum(summary.molecules.values()) == 200 and summary.too_long > 0
    assert max(len(r.raw_input) for r in records) <= 20
    with pytest.raises(UserError, match="max-smiles-length"):
        build_chem(tmp_path, max_smiles_length=-3)


def test_unparseable_and_duplicate_smiles_are_skipped(tmp_path: Path) -> None:
    source = tmp_path / "mols.smi"
    source.write_text("CCO\t1\nnot_a_smiles\t2\nOCC\t3\nC1CC\t4\nc1ccccc1\t5\n\nCC(=O)O 6\n")
    summary = build_chem(tmp_path / "out", source=source)
    assert (summary.read, summary.unparseable, summary.duplicates) == (6, 2, 1)
    assert sum(summary.molecules.values()) == 3
    assert summary.molecules["validation"] == summary.molecules["test"] == 1


def test_failed_build_leaves_previous_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_chem(tmp_path, seed=0, max_molecules=20)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_stage = atomic.stage_file
    calls = {"n": 0}

    def failing_stage(path: Path, chunks: Iterable[bytes], mode: int | None = None) -> Path:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real_stage(path, chunks, mode)

    monkeypatch.setattr(atomic, "stage_file", failing_stage)
    with pytest.raises(OSError):
        build_chem(tmp_path, seed=1, max_molecules=20)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # same files, same bytes, no temp files left
    calls["n"] = 0
    fresh = tmp_path / "fresh"
    with pytest.raises(OSError):
        build_chem(fresh, seed=1, max_molecules=20)
    assert list(fresh.iterdir()) == []  # no half-written dataset


# ---------------------------------------------------------------- loading SMolInstruct JSONL

REAL_STYLE = {
    "input": "Given <SMILES> CCO </SMILES>, what is its molecular formula?",
    "output": "It is <MOLFORMULA> C2H6O </MOLFORMULA> .",
    "raw_input": "CCO",
    "raw_output": "C2H6O",
    "split": "test",
    "task": "name_conversion-s2f",
    "input_core_tag_left": "<SMILES>",
    "input_core_tag_right": "</SMILES>",
    "output_core_tag_left": "<MOLFORMULA>",
    "output_core_tag_right": "</MOLFORMULA>",
    "target": None,
}


def test_loader_reads_real_smolinstruct_records(tmp_path: Path) -> None:
    esol = dict(
        REAL_STYLE,
        task="property_prediction-esol",
        raw_output=-0.77,
        output="<NUMBER> -0.77 </NUMBER>",
    )
    path = tmp_path / "smol.jsonl"
    path.write_text(json.dumps(REAL_STYLE) + "\n\n" + json.dumps(esol) + "\n")
    records = load_jsonl(path)
    assert [r.task for r in records] == ["name_conversion-s2f", "property_prediction-esol"]
    assert records[1].raw_output == "-0.77"
    assert answer_of(records[0].output) == "C2H6O"
    assert not hasattr(records[0], "target")
    assert len(load_jsonl(path, tasks={"property_prediction-esol"})) == 1
    assert len(load_jsonl(path, limit=1)) == 1
    with pytest.raises(UserError, match="tasks present: name_conversion-s2f"):
        load_jsonl(path, tasks={"forward_synthesis"})


def test_loader_reads_a_directory_in_name_order(tmp_path: Path) -> None:
    write_jsonl([Record.model_validate(dict(REAL_STYLE, raw_input="B"))], tmp_path / "b.jsonl")
    write_jsonl([Record.model_validate(dict(REAL_STYLE, raw_input="A"))], tmp_path / "a.jsonl")
    (tmp_path / "notes.txt").write_text("not data")
    assert [r.raw_input for r in load_jsonl(tmp_path)] == ["A", "B"]
    with pytest.raises(UserError, match="no records for splits train"):
        load_jsonl(tmp_path, splits={"train"})


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = json.dumps(REAL_STYLE)
    path.write_text(f'{good}\n{good}\n{{"input": "oops"\n{good}\n')
    with pytest.raises(UserError) as info:
        load_jsonl(path)
    err = info.value
    assert err.file == str(path) and err.field == "line 3"
    assert "not valid JSON" in err.message and err.fix
    assert "\n" not in err.render()


def test_missing_field_and_bad_split_are_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    missing = {k: v for k, v in REAL_STYLE.items() if k != "raw_output"}
    path.write_text(json.dumps(REAL_STYLE) + "\n" + json.dumps(missing) + "\n")
    with pytest.raises(UserError, match=r"line 2: field 'raw_output' is missing"):
        load_jsonl(path)
    path.write_text(json.dumps(dict(REAL_STYLE, split="dev")) + "\n")
    with pytest.raises(UserError, match=r"line 1: field 'split'"):
        load_jsonl(path)
    path.write_text("[1, 2]\n")
    with pytest.raises(UserError, match="expected a JSON object"):
        load_jsonl(path)


def test_missing_path_says_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        load_jsonl(tmp_path / "nowhere" / "train.jsonl")
    assert "nowhere" in info.value.render()
    assert "crossfl data build-chem --out" in info.value.render()
    assert "make data" in info.value.render()
    with pytest.raises(UserError, match=r"no \*\.jsonl files"):
        load_jsonl(tmp_path)


def test_write_jsonl_round_trip_leaves_no_temp(tmp_path: Path) -> None:
    records = synthetic({"t1": 3, "t2": 2})
    path = write_jsonl(records, tmp_path / "sub" / "x.jsonl")
    assert load_jsonl(path) == records
    assert [p.name for p in path.parent.iterdir()] == ["x.jsonl"]


# ---------------------------------------------------------------- partitioning

SITES = ["alpha", "beta", "gamma"]
TASK_SIZES = {f"task{i}": 200 + 10 * i for i in range(5)}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_partition_is_disjoint_complete_deterministic(scheme: str) -> None:
    records = synthetic(TASK_SIZES)
    parts = partition(records, SITES, scheme, seed=0)
    assert list(parts) == SITES
    flat = [key for recs in parts.values() for key in ids(recs)]
    assert len(flat) == len(set(flat)) == len(records)
    assert set(flat) == set(ids(records))
    assert all(parts.values())
    again = partition(records, SITES, scheme, seed=0)
    assert {s: ids(r) for s, r in again.items()} == {s: ids(r) for s, r in parts.items()}
    other = partition(records, SITES, scheme, seed=1)
    assert {s: ids(r) for s, r in other.items()} != {s: ids(r) for s, r in parts.items()}


def test_iid_sizes_are_balanced() -> None:
    parts = partition(synthetic(TASK_SIZES), SITES, "iid", seed=5)
    sizes = [len(r) for r in parts.values()]
    assert max(sizes) - min(sizes) <= 1
    assert max_task_share(parts) < 0.3  # 5 tasks mixed: about 0.2 each


def test_by_task_skew_is_measurable() -> None:
    records = synthetic(TASK_SIZES)
    parts = partition(records, SITES, "by_task", seed=0)
    # 5 tasks over 3 sites: alpha owns task0+task3, beta task1+task4, gamma task2
    owned = {"alpha": {"task0", "task3"}, "beta": {"task1", "task4"}, "gamma": {"task2"}}
    assert all(share > 0.85 for share in own_share(parts, owned).values())
    iid = partition(records, SITES, "iid", seed=0)
    assert all(share < 0.7 for share in own_share(iid, owned).values())
    # each site still sees every task a little
    assert all(len(c) == 5 for c in task_counts(parts).values())


def test_by_task_with_more_sites_than_tasks() -> None:
    records = synthetic({"a": 100, "b": 100})
    sites = [f"s{i}" for i in range(5)]
    parts = partition(records, sites, "by_task", seed=0)
    dominant = {
        site: Counter(r.task for r in recs).most_common(1)[0][0] for site, recs in parts.items()
    }
    assert dominant == {"s0": "a", "s1": "b", "s2": "a", "s3": "b", "s4": "a"}
    assert sum(len(r) for r in parts.values()) == 200


def test_dirichlet_alpha_controls_skew() -> None:
    records = synthetic(TASK_SIZES)
    skewed = [
        max_task_share(partition(records, SITES, "dirichlet", seed=s, alpha=0.1)) for s in range(5)
    ]
    mixed = [
        max_task_share(partition(records, SITES, "dirichlet", seed=s, alpha=100.0))
        for s in range(5)
    ]
    assert sum(skewed) / 5 > sum(mixed) / 5 + 0.15
    assert max(mixed) < 0.35
    a = partition(records, SITES, "dirichlet", seed=0, alpha=0.5)
    b = partition(records, SITES, "dirichlet", seed=0, alpha=5.0)
    assert {s: ids(r) for s, r in a.items()} != {s: ids(r) for s, r in b.items()}


def test_every_site_gets_a_record_even_with_tiny_alpha() -> None:
    records = synthetic({"only": 12})
    sites = [f"s{i}" for i in range(10)]
    for seed in range(5):
        parts = partition(records, sites, "dirichlet", seed=seed, alpha=0.01)
        assert all(parts.values())
        assert sum(len(r) for r in parts.values()) == 12


def test_partition_refuses_what_cannot_work() -> None:
    records = synthetic({"t": 2})
    with pytest.raises(UserError, match="cannot give each of 3 sites one"):
        partition(records, SITES, "iid")
    with pytest.raises(UserError, match="iid, by_task, dirichlet"):
        partition(records, ["a"], "random")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="repeated: a"):
        partition(records, ["a", "a"], "iid")
    with pytest.raises(UserError, match="file names"):
        partition(records, ["../x"], "iid")
    with pytest.raises(UserError, match="alpha"):
        partition(records, ["a"], "dirichlet", alpha=0.0)
    with pytest.raises(UserError, match="seed"):
        partition(records, ["a"], "iid", seed=-1)


def test_write_partitions_uses_train_split_only(
    full_set: tuple[Path, chem.BuildSummary], tmp_path: Path
) -> None:
    out, summary = full_set
    paths = write_partitions(out, SITES, tmp_path / "parts", "by_task", seed=0, alpha=0.5)
    assert list(paths) == SITES
    assert all(p == tmp_path / "parts" / f"{s}.jsonl" for s, p in paths.items())
    loaded = {site: load_jsonl(path) for site, path in paths.items()}
    total = sum(len(r) for r in loaded.values())
    assert total == summary.molecules["train"] * len(TASKS)
    assert {r.split for recs in loaded.values() for r in recs} == {"train"}
    manifest = json.loads((tmp_path / "parts" / "partition.json").read_text())
    assert manifest["records"] == {site: len(r) for site, r in loaded.items()}
    assert not [p for p in (tmp_path / "parts").iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------- the CLI


def test_cli_build_and_partition(tmp_path: Path) -> None:
    runner = CliRunner()
    app = data_app()
    result = runner.invoke(
        app,
        [
            "data",
            "build-chem",
            "--out",
            str(tmp_path / "chem"),
            "--max-molecules",
            "40",
            "--seed",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "name_conversion-s2f" in result.output and "32" in result.output
    result = runner.invoke(
        app,
        [
            "data",
            "partition",
            "--train",
            str(tmp_path / "chem" / "train.jsonl"),
            "--sites",
            "a,b",
            "--scheme",
            "dirichlet",
            "--alpha",
            "0.3",
            "--out",
            str(tmp_path / "parts"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "parts").glob("*.jsonl")) == ["a.jsonl", "b.jsonl"]


def test_cli_bad_scheme_is_one_line_nonzero(tmp_path: Path) -> None:
    build_chem(tmp_path / "chem", max_molecules=10)
    args = [
        "data",
        "partition",
        "--train",
        str(tmp_path / "chem" / "train.jsonl"),
        "--sites",
        "a,b",
        "--scheme",
        "shuffled",
        "--out",
        str(tmp_path / "parts"),
    ]
    result = CliRunner().invoke(data_app(), args)
    assert result.exit_code != 0
    assert isinstance(result.exception, UserError)
    code, message = run_like_main(args)
    assert code == 2
    assert message.count("\n") == 0
    assert "shuffled" in message and "iid, by_task, dirichlet" in message
    assert not (tmp_path / "parts").exists()


def test_cli_missing_train_file_is_a_user_error(tmp_path: Path) -> None:
    code, message = run_like_main(
        [
            "data",
            "partition",
            "--train",
            str(tmp_path / "no.jsonl"),
            "--sites",
            "a",
            "--out",
            str(tmp_path / "p"),
        ]
    )
    assert code == 2 and "no.jsonl" in message and "build-chem" in message


def test_main_cli_prints_one_line_and_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through crossfl.cli.main itself, with only the data area registered."""
    from crossfl import cli

    monkeypatch.setattr(cli, "AREAS", ("data",))
    monkeypatch.setattr(
        "sys.argv",
        [
            "crossfl",
            "data",
            "partition",
            "--train",
            str(tmp_path / "t.jsonl"),
            "--sites",
            "a",
            "--scheme",
            "bogus",
            "--out",
            str(tmp_path / "p"),
        ],
    )
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: scheme: unknown partition scheme 'bogus'")
    assert "\n" not in err and "Traceback" not in err
