"""The LoRA adapter's layout (its tensors' names and shapes) from a model's config.json alone:
the base adapter every site's update must match, known before any site has answered.

peft adapts each ``nn.Linear`` whose module name is a target or ends with ``.<target>``; a
Linear of ``in`` to ``out`` features gets ``lora_A.weight`` (r x in) and ``lora_B.weight``
(out x r), named ``base_model.model.<module>.lora_{A,B}.weight`` in its state dict. For the
decoders of Llama's shape (``LLAMA_SHAPED``: attention ``q/k/v/o_proj``, MLP
``gate/up/down_proj``, as transformers builds them) this module computes that from the config's
sizes, without peft or transformers: the server process imports neither (t19). Any other model,
a config that leaves a size to the model class's default, or a target outside those
projections, is asked of peft itself, on the meta device (no weight read), in a child process
(``python -m crossfl.client adapter-layout``), which needs the ``train`` extra installed here.
tests/test_untrusted_sites.py holds the computed layouts against peft's.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from crossfl.client.contract import LoraSpec
from crossfl.errors import UserError

Shapes = dict[str, tuple[int, ...]]

# model_type -> whether head_dim defaults to hidden_size // num_attention_heads when the config
# does not state it (transformers 5.17: Qwen3's default is 128 instead)
LLAMA_SHAPED = {"llama": True, "mistral": True, "qwen2": True, "qwen3": False}
SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
CHILD_TIMEOUT_S = 600


def adapter_shapes(model_dir: str, lora: LoraSpec) -> Shapes:
    """The adapter's tensors of ``lora`` on the model of ``model_dir``'s config.json."""
    path = Path(model_dir) / "config.json"
    try:
        text = path.read_text()
        config = json.loads(text)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"the model's config cannot be read: {exc}",
            file=path,
            fix="point model.path at a Hugging Face model directory",
        ) from None
    computed = llama_shaped(config, lora) if isinstance(config, dict) else None
    return computed if computed is not None else _by_peft(model_dir, text, lora)


def llama_shaped(config: dict[str, Any], lora: LoraSpec) -> Shapes | None:
    """The adapter's tensors from a Llama-shaped decoder's sizes, or None when this model or
    these targets are not one this function knows exactly."""
    default_head_dim = LLAMA_SHAPED.get(str(config.get("model_type")))
    keys = (*SIZES, "num_key_value_heads")
    sizes = [v for v in (config.get(k) for k in keys) if isinstance(v, int) and v > 0]
    if default_head_dim is None or len(sizes) != len(keys):
        return None
    hidden, inter, layers, heads, kv_heads = sizes
    head_dim = config.get("head_dim")
    if head_dim is None and default_head_dim:
        head_dim = hidden // heads
    if not isinstance(head_dim, int) or head_dim <= 0:
        return None
    linear = {  # module name below the layer -> (in, out) features
        "self_attn.q_proj": (hidden, heads * head_dim),
        "self_attn.k_proj": (hidden, kv_heads * head_dim),
        "self_attn.v_proj": (hidden, kv_heads * head_dim),
        "self_attn.o_proj": (heads * head_dim, hidden),
        "mlp.gate_proj": (hidden, inter),
        "mlp.up_proj": (hidden, inter),
        "mlp.down_proj": (inter, hidden),
    }
    names = {f"model.layers.{i}.{m}": m for i in range(layers) for m in linear}
    targets = set(lora.target_modules)
    if not all(any(_targets(n, {t}) for n in names) for t in targets):
        return None  # a target this table does not hold (lm_head, a whole block): peft decides
    shapes: Shapes = {}
    for name, m in names.items():
        if _targets(name, targets):
            n_in, n_out = linear[m]
            shapes[f"base_model.model.{name}.lora_A.weight"] = (lora.r, n_in)
            shapes[f"base_model.model.{name}.lora_B.weight"] = (n_out, lora.r)
    return shapes


def _targets(name: str, targets: set[str]) -> bool:
    """peft's rule for a list of target modules: the name, or its dotted suffix."""
    return any(name == t or name.endswith("." + t) for t in targets)


@functools.lru_cache(maxsize=16)
def _by_peft(model_dir: str, config_text: str, lora: LoraSpec) -> Shapes:
    """peft's own answer, from a child process (this one keeps the training stack out);
    ``config_text`` keys the cache: a changed config.json is asked again."""
    fix = "install the train extra here (pip install 'crossfl[train]'), or use a model of " + (
        ", ".join(sorted(LLAMA_SHAPED)) + " type whose config.json states its sizes"
    )
    if importlib.util.find_spec("peft") is None or importlib.util.find_spec("transformers") is None:
        raise UserError(
            "the LoRA adapter's layout of this model needs peft and transformers, which are "
            "not installed here",
            file=Path(model_dir) / "config.json",
            fix=fix,
        )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "crossfl.client",
            "adapter-layout",
            model_dir,
            lora.model_dump_json(),
        ],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise UserError(
            "peft could not build the LoRA adapter of this model: "
            + (lines[-1] if lines else f"exit {proc.returncode}"),
            file=Path(model_dir) / "config.json",
            fix="check the model's config.json and lora.target_modules",
        )
    return {k: tuple(v) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
