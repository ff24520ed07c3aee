"""Flat parameter buffers: one 1-D float32 tensor per model state.

Strategies aggregate over flat buffers (one ``torch.cat`` in, views out) so that the
arithmetic is a handful of vectorized ops over the whole adapter instead of a Python loop
per tensor. ``FlatSpec`` remembers the layout (sorted keys, shapes, dtypes, offsets).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
        return [b - a for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=False)]

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
        for key, shape in zip(self.keys, self.shapes, strict=False):
            if state[key].shape != shape:
                raise ValueError(
                    f"{key}: shape {tuple(state[key].shape)} does not match layout {tuple(shape)}"
                )

    def flatten(
        self, state: Mapping[str, torch.Tensor], *, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One contiguous 1-D float32 tensor (a single ``torch.cat``).

        ``out`` (float32, ``numel`` long) is filled instead of a fresh allocation; reusing one
        saves the page faults of a new buffer, which can cost more than the copy itself.
        """
        self.check(state)
        parts = [state[k].detach().reshape(-1) for k in self.keys]
        if out is not None and (out.dtype != torch.float32 or out.shape != (self.numel,)):
            raise ValueError(
                f"out must be float32 of shape ({self.numel},), got {out.dtype} {tuple(out.shape)}"
            )
        if not all(p.dtype == torch.float32 for p in parts) and not _cat_casts():
            parts = [p.to(torch.float32) for p in parts]
        if out is None:
            if all(p.dtype == torch.float32 for p in parts):
                return torch.cat(parts)
            out = torch.empty(self.numel, dtype=torch.float32, device=parts[0].device)
        return torch.cat(parts, out=out)

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
        for key, piece, shape, dtype in zip(
            self.keys, pieces, self.shapes, self.dtypes, strict=False
        ):
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


def flatten(
    state: Mapping[str, torch.Tensor],
    spec: FlatSpec | None = None,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Flatten ``state`` into a 1-D float32 tensor (layout from ``spec`` or built from it)."""
    return (spec or FlatSpec.from_state(state)).flatten(state, out=out)


def unflatten(vec: torch.Tensor, spec: FlatSpec, *, copy: bool = False) -> dict[str, torch.Tensor]:
    """Inverse of :func:`flatten` for the given layout."""
    return spec.unflatten(vec, copy=copy)


def weighted_sum(
    vectors: Sequence[torch.Tensor], weights: Sequence[float], *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``sum_i weights[i] * vectors[i]`` over equal-length 1-D tensors, in float32.

    One multiply and one in-place ``add_(alpha=w)`` per vector, each a single op over the
    whole buffer. (A cache-blocked variant streams less memory but issues one multi-threaded
    op per block and vector; on busy shared cores the thread barriers cost more than they
    save, so the plain form was both faster and steadier in ``benchmarks/bench_aggregation``.)
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
    torch.mul(vectors[0], ws[0], out=out)
    for v, w in zip(vectors[1:], ws[1:], strict=False):
        out.add_(v, alpha=w)
    return out
