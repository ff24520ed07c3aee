"""The offline tiny base model: loads like any checkpoint, deterministic, written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
from typer.testing import CliRunner

from crossfl.errors import UserError
from crossfl.locks import DIR_LOCK
from crossfl.tiny_model import TinyModelSpec, build_tiny

SMALL = TinyModelSpec(
    vocab_size=300,
    hidden_size=32,
    num_layers=1,
    num_heads=2,
    intermediate_size=64,
    max_position=64,
    pretrain_steps=4,
    pretrain_batch=2,
    pretrain_seq_len=16,
    seed=3,
    threads=1,
)
MOLECULES = [
    ("CCO", "C2H6O"),
    ("CC(=O)O", "C2H4O2"),
    ("c1ccccc1", "C6H6"),
    ("CCN", "C2H7N"),
    ("CC(C)O", "C3H8O"),
    ("OCCO", "C2H6O2"),
    ("C1CCCCC1", "C6H12"),
    ("CCCl", "C2H5Cl"),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "train.jsonl"
    rows = [
        {
            "input": f"What is the molecular formula of <SMILES> {s} </SMILES> ?",
            "output": f"<MOLFORMULA> {f} </MOLFORMULA>",
            "raw_input": s,
            "raw_output": f,
            "task": "name_conversion-s2f",
            "split": "train",
        }
        for s, f in MOLECULES * 4
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def test_output_loads_like_a_checkpoint(data: Path, tmp_path: Path) -> None:
    summary = build_tiny(data, tmp_path / "m", SMALL)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1
    assert summary.parameters == sum(p.numel() for p in model.parameters())
    assert summary.vocab_size == len(tok) == model.config.vocab_size
    assert summary.bytes_on_disk > 0 and summary.pretrain_steps == 4
    for name in ("bos", "eos", "pad"):
        assert getattr(tok, f"{name}_token_id") is not None
        assert getattr(model.config, f"{name}_token_id") == getattr(tok, f"{name}_token_id")
    text = "What is the molecular formula of <SMILES> CC(=O)Oc1ccccc1C(=O)O </SMILES> ?"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    ids = torch.tensor([tok.encode("<MOLFORMULA> C2H6O", add_special_tokens=False)])
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tok))


def test_build_is_deterministic(data: Path, tmp_path: Path) -> None:
    build_tiny(data, tmp_path / "a", SMALL)
    build_tiny(data, tmp_path / "b", SMALL)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_bytes()
    c = _weights(Path(build_tiny(data, tmp_path / "c", SMALL.model_copy(update={"seed": 4})).out))
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_pretraining_lowers_the_loss(data: Path, tmp_path: Path) -> None:
    summary = build_tiny(data, tmp_path / "m", SMALL.model_copy(update={"pretrain_steps": 30}))
    assert summary.pretrain_last_loss < summary.pretrain_first_loss


def test_rebuild_replaces_the_directory_atomically(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "models" / "tiny"
    out.mkdir(parents=True)
    (out / "stale.txt").write_text("old")
    build_tiny(data, out, SMALL)
    assert not (out / "stale.txt").exists() and (out / "config.json").is_file()
    # no temp dirs left; the lock file beside the directory stays by design (crossfl.locks)
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["tiny", DIR_LOCK])
    assert (out.stat().st_mode & 0o755) == 0o755


def test_missing_data_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="make data"):
        build_tiny(tmp_path / "none.jsonl", tmp_path / "m", SMALL)
    assert not (tmp_path / "m").exists()


def test_bad_options_are_user_errors_naming_the_option() -> None:
    from crossfl.tiny_model import make_spec

    with pytest.raises(UserError, match="--vocab-size"):
        make_spec(vocab_size=10)
    with pytest.raises(UserError, match="--layers"):
        make_spec(num_layers=0)
    with pytest.raises(UserError, match="not a multiple"):
        make_spec(hidden_size=30, num_heads=4)


def test_cli_build_tiny(data: Path, tmp_path: Path) -> None:
    from crossfl.cli.model import register

    app = typer.Typer()
    register(app)
    out = tmp_path / "cli-model"
    result = CliRunner().invoke(
        app,
        [
            "model",
            "build-tiny",
            "--data",
            str(data),
            "--out",
            str(out),
            "--vocab-size",
            "300",
            "--hidden-size",
            "32",
            "--layers",
            "1",
            "--heads",
            "2",
            "--intermediate-size",
            "64",
            "--pretrain-steps",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "parameters" in result.output and "on disk" in result.output
    assert AutoTokenizer.from_pretrained(out).pad_token == "<pad>"
