"""LoRA adapters on the wire: a flat ``{name: tensor}`` dict as safetensors bytes.

Key names are peft's (``get_peft_model_state_dict``: no adapter name inside), so every site and
the server agree on them; the server flattens the dict in sorted-key order for aggregation.
"""

from __future__ import annotations

import json
import math
import struct

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from crossfl.client.contract import WIRE_DTYPES
from crossfl.errors import UserError

LORA_METADATA_KEY = "crossfl.lora"
"""Header metadata key holding the LoRA config (JSON) that produced an adapter."""

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def torch_dtype(
    name: str, *, allowed: tuple[str, ...] = WIRE_DTYPES, field: str = "adapter_dtype"
) -> torch.dtype:
    """Map a dtype name (one of ``allowed``) to the torch dtype."""
    if name not in allowed:
        raise UserError(f"unknown dtype {name!r}", field=field, fix="use " + " or ".join(allowed))
    return _DTYPES[name]


def adapter_to_bytes(
    state_dict: dict[str, torch.Tensor],
    dtype: str = "float32",
    metadata: dict[str, str] | None = None,
) -> bytes:
    """Serialize a LoRA state dict to safetensors bytes, every tensor cast to ``dtype``.

    ``metadata`` (string to string) travels in the safetensors header; train_round records the
    LoRA config there under ``crossfl.lora`` so evaluate can rebuild the wrapper from the bytes.
    """
    target = torch_dtype(dtype)
    tensors = {
        name: t.detach().to(device="cpu", dtype=target).contiguous()
        for name, t in sorted(state_dict.items())
    }
    return _st_save(tensors, metadata=metadata)


def adapter_metadata(data: bytes) -> dict[str, str]:
    """The string metadata in a safetensors header (empty when there is none)."""
    raw = bytes(data[:8])
    if len(raw) < 8:
        return {}
    (size,) = struct.unpack("<Q", raw)
    try:
        header = json.loads(bytes(data[8 : 8 + size]))
    except ValueError:
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


def adapter_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """Parse safetensors bytes back into a ``{name: tensor}`` dict (tensors on cpu)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UserError(f"adapter must be bytes, got {type(data).__name__}", field="adapter")
    try:
        return dict(_st_load(bytes(data)))
    except Exception as exc:  # safetensors raises its own error types
        raise UserError(
            f"adapter bytes are not a safetensors file: {exc}",
            field="adapter",
            fix="send the bytes returned by adapter_to_bytes / train_round",
        ) from exc


def fresh_adapter_from_shapes(
    shapes: dict[str, tuple[int, ...]], seed: int
) -> dict[str, torch.Tensor]:
    """peft's default LoRA init (A: Kaiming-uniform, B: zeros), drawn from a generator seeded
    with ``seed`` in sorted key order: the same tensors in every process, whatever its RNG
    history. Sites start round 1 from this when no adapter is sent; the server rebuilds the same
    global version 0 from the key names and shapes alone."""
    gen = torch.Generator().manual_seed(seed)
    fresh: dict[str, torch.Tensor] = {}
    for name in sorted(shapes):
        t = torch.empty(tuple(shapes[name]), dtype=torch.float32)
        if ".lora_A." in name:
            torch.nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=gen)
        elif ".lora_embedding_B." in name:
            torch.nn.init.normal_(t, generator=gen)
        else:  # lora_B, lora_embedding_A
            torch.nn.init.zeros_(t)
        fresh[name] = t
    return fresh
