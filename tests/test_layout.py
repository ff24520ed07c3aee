"""The base adapter's layout from a model's config.json (crossfl.client.layout): computed for
Llama-shaped decoders exactly as peft builds it, asked of peft in a child process for anything
else, and never with the training stack in the server's process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

from crossfl.client.contract import LoraSpec
from crossfl.client.layout import adapter_shapes, llama_shaped
from crossfl.client.train import peft_adapter_shapes
from crossfl.errors import UserError

SMALL = {"vocab_size": 64, "num_hidden_layers": 2, "intermediate_size": 48}
CONFIGS = {
    "llama": LlamaConfig(hidden_size=32, num_attention_heads=4, **SMALL),
    "llama-gqa": LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, **SMALL),
    "mistral-head-dim": MistralConfig(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=1, head_dim=12, **SMALL
    ),
    "qwen2": Qwen2Config(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, **SMALL),
    "qwen3": Qwen3Config(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=16, **SMALL
    ),
}
TARGETS = [
    ("q_proj", "v_proj"),
    ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    ("self_attn.o_proj", "mlp.down_proj", "model.layers.1.self_attn.k_proj"),
]


def config_dir(tmp_path: Path, config: Any) -> Path:
    config.save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("targets", TARGETS, ids=["qv", "all", "dotted"])
@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_the_computed_layout_is_peft_s(tmp_path: Path, kind: str, targets: tuple) -> None:
    model = config_dir(tmp_path, CONFIGS[kind])
    lora = LoraSpec(r=3, target_modules=targets)
    computed = llama_shaped(json.loads((model / "config.json").read_text()), lora)
    assert computed is not None and computed == peft_adapter_shapes(str(model), lora)
    assert adapter_shapes(str(model), lora) == computed


def test_what_it_cannot_compute_it_leaves_to_peft(tmp_path: Path) -> None:
    """A target outside the projections (lm_head), a size left to the class's default, or
    another architecture: no computed answer (a guess could refuse every honest update)."""
    model = config_dir(tmp_path, CONFIGS["llama"])
    config = json.loads((model / "config.json").read_text())
    assert llama_shaped(config, LoraSpec(target_modules=("q_proj", "lm_head"))) is None
    assert llama_shaped({**config, "model_type": "gpt2"}, LoraSpec()) is None
    no_kv = {k: v for k, v in config.items() if k != "num_key_value_heads"}
    assert llama_shaped(no_kv, LoraSpec()) is None  # Mistral's default is 8, Llama's the heads
    qwen3 = {**config, "model_type": "qwen3", "head_dim": None}
    assert llama_shaped(qwen3, LoraSpec()) is None  # Qwen3's default head_dim is 128


@pytest.mark.slow  # a child process with peft and transformers per check
def test_peft_answers_in_a_child_process(tmp_path: Path) -> None:
    model = config_dir(tmp_path, CONFIGS["llama"])
    lora = LoraSpec(r=2, target_modules=("q_proj", "lm_head"))
    shapes = adapter_shapes(str(model), lora)
    assert shapes == peft_adapter_shapes(str(model), lora)
    assert shapes["base_model.model.lm_head.lora_B.weight"] == (64, 2)
    with pytest.raises(UserError, match="peft could not build the LoRA adapter") as info:
        adapter_shapes(str(model), LoraSpec(target_modules=("no_such_module",)))
    assert info.value.file is not None and str(info.value.file).endswith("config.json")


PROBE = """
import json, sys
from crossfl.client.contract import LoraSpec
from crossfl.server.screening import base_layout
spec = base_layout(sys.argv[1], LoraSpec(target_modules=("q_proj", "down_proj")), "bfloat16")
loaded = sorted(m for m in ("peft", "transformers") if m in sys.modules)
print(json.dumps([len(spec.keys), spec.numel, loaded]))
"""


@pytest.mark.slow  # a process of its own, to see what it imports
def test_the_server_derives_the_layout_without_the_training_stack(tmp_path: Path) -> None:
    model = config_dir(tmp_path, CONFIGS["llama-gqa"])
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(model)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    keys, numel, loaded = json.loads(proc.stdout.splitlines()[-1])
    lora = LoraSpec(target_modules=("q_proj", "down_proj"))
    expected = peft_adapter_shapes(str(model), lora)
    assert keys == len(expected) == 8
    assert numel == sum(torch.Size(s).numel() for s in expected.values())
    assert loaded == []
