"""Flat parameter buffers: one 1-D float32 tensor per model state.

Strategies aggregate over flat buffers (one ``torch.cat`` in, views out) so that the
arithmetic is a handful of vectorized ops over the whole adapter instead of a Python loop
per tensor. ``FlatSpec`` remembers the layout (sorted keys, shapes, dtypes, offsets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

__all__ = ["FlatSpec", "flatten", "unflatten", "weighted_sum"]


@dataclass(frozen=True)
class FlatSpec:
    """Layout of a state dict inside a flat float32 buffer (keys in sorted order)."""

    keys: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    dtypes: tuple[torch.dtype, ...]
    offsets: tuple[int, ...]  # start of each key; len(keys) + 1 entries, last = numel
    numel: int

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor]) -> FlatSpec:
        if not state:
            raise ValueError("cannot build a FlatSpec from an empty state dict")
        keys = tuple(sorted(state))
        shapes: list[torch.Size] = []
        dtypes: list[torch.dtype] = []
        offsets = [0]
        for key in keys:
            tensor = state[key]
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(f"{key}: expected a torch.Tensor, got {type(tensor).__name__}")
            shapes.append(tensor.shape)
            dtypes.append(tensor.dtype)
            offsets.append(offsets[-1] + math.prod(tensor.shape))
        return cls(keys, tuple(shapes), tuple(dtypes), tuple(offsets), offsets[-1])

    @property
    def sizes(self) -> list[int]:
        return [b - a for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    @property
    def nbytes(self) -> int:
        """Bytes of the flat float32 buffer."""
        return self.numel * 4

    def check(self, state: Mapping[str, torch.Tensor]) -> None:
        """Raise ValueError naming the first key that is missing, extra or of another shape."""
        if len(state) != len(self.keys) or any(k not in state for k in self.keys):
            missing = [k for k in self.keys if k not in state]
            extra = sorted(k for k in state if k not in set(self.keys))
            if missing:
                raise ValueError(f"{missing[0]}: key missing from state dict")
            raise ValueError(f"{extra[0]}: key not in the flat layout")
        for key, shape in zip(self.keys, self.shapes):
            if state[key].shape != shape:
                raise ValueError(
                    f"{key}: shape {tuple(state[key].shape)} does not match layout {tuple(shape)}"
                )

    def flatten(self, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """One contiguous 1-D float32 tensor (a single ``torch.cat``)."""
        self.check(state)
        parts = [state[k].detach().reshape(-1) for k in self.keys]
        if all(p.dtype == torch.float32 for p in parts):
            return torch.cat(parts)
        if _cat_casts():
            out = torch.empty(self.numel, dtype=torch.float32, device=parts[0].device)
            return torch.cat(parts, out=out)
        return torch.cat([p.to(torch.float32) for p in parts])

    def unflatten(self, vec: torch.Tensor, *, copy: bool = False) -> dict[str, torch.Tensor]:
        """Tensors in the original shapes and dtypes.

        float32 entries are views of ``vec`` unless ``copy``; other dtypes are cast copies.
        """
        if vec.dim() != 1 or vec.numel() != self.numel:
            raise ValueError(
                f"flat buffer has shape {tuple(vec.shape)}, layout needs ({self.numel},)"
            )
        pieces = torch.split(vec, self.sizes)
        out: dict[str, torch.Tensor] = {}
        for key, piece, shape, dtype in zip(self.keys, pieces, self.shapes, self.dtypes):
            t = piece.view(shape)
            if dtype != vec.dtype:
                t = t.to(dtype)
            elif copy:
                t = t.clone()
            out[key] = t
        return out


_CAT_CASTS: bool | None = None


def _cat_casts() -> bool:
    """Whether ``torch.cat(..., out=float32)`` accepts mixed-dtype inputs on this torch."""
    global _CAT_CASTS
    if _CAT_CASTS is None:
        try:
            out = torch.empty(2, dtype=torch.float32)
            torch.cat([torch.ones(1, dtype=torch.bfloat16), torch.ones(1)], out=out)
            _CAT_CASTS = bool(out.eq(1).all())
        except (RuntimeError, TypeError):
            _CAT_CASTS = False
    return _CAT_CASTS


def flatten(state: Mapping[str, torch.Tensor], spec: FlatSpec | None = None) -> torch.Tensor:
    """Flatten ``state`` into a 1-D float32 tensor (layout from ``spec`` or built from it)."""
    return (spec or FlatSpec.from_state(state)).flatten(state)


def unflatten(vec: torch.Tensor, spec: FlatSpec, *, copy: bool = False) -> dict[str, torch.Tensor]:
    """Inverse of :func:`flatten` for the given layout."""
    return spec.unflatten(vec, copy=copy)


# Chunk length (elements) for fused weighted sums: 2 MB of float32 per client slice keeps the
# running accumulator in cache, so the sum streams each client buffer through memory once.
_CHUNK = 1 << 19


def weighted_sum(
    vectors: Sequence[torch.Tensor], weights: Sequence[float], *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``sum_i weights[i] * vectors[i]`` over equal-length 1-D tensors, in float32.

    Works slice by slice so the accumulator stays in cache: about the cost of one
    ``torch.mean`` over the stacked buffers, without materializing the stack.
    """
    if len(vectors) == 0 or len(vectors) != len(weights):
        raise ValueError(f"need as many weights as vectors, got {len(weights)} and {len(vectors)}")
    n = vectors[0].numel()
    for i, v in enumerate(vectors):
        if v.dim() != 1 or v.numel() != n:
            raise ValueError(f"vector {i} has shape {tuple(v.shape)}, expected ({n},)")
    ws = [float(w) for w in weights]
    if out is None:
        out = torch.empty(n, dtype=torch.float32, device=vectors[0].device)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        acc = out[start:stop]
        torch.mul(vectors[0][start:stop], ws[0], out=acc)
        for v, w in zip(vectors[1:], ws[1:]):
            acc.add_(v[start:stop], alpha=w)
    return out
