"""Field-by-field operations on dataclasses of tensors (batches, render outputs, prompt embeddings, shading).

One small helper instead of a loop per dataclass (nerfstudio's ``TensorDataclass`` is the full-blown model; these
four functions are all the framework needs). A field that is ``None`` stays ``None``; fields that are not tensors
are copied from the first item (or combined by a reducer where the caller says so).

Example::

    out = RenderOutput(...)                       # fields [B, T, H, W, C] and num_samples: int
    out_gpu = map_tensors(out, lambda x: x.cuda())
    whole = cat_tensors([part_a, part_b], dim=0, reduce={"num_samples": sum})
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Optional, TypeVar

import torch
from torch import Tensor

D = TypeVar("D")


def map_tensors(obj: D, fn: Callable[[Tensor], Tensor], only: Optional[Sequence[str]] = None) -> D:
    """A copy of the dataclass ``obj`` with ``fn`` applied to each tensor field (``only``: just these fields)."""
    changes = {}
    for f in dataclasses.fields(obj):
        if only is not None and f.name not in only:
            continue
        value = getattr(obj, f.name)
        if isinstance(value, Tensor):
            changes[f.name] = fn(value)
    return dataclasses.replace(obj, **changes)


def cat_tensors(items: Sequence[D], dim: int = 0, reduce: Optional[dict[str, Callable[[list[Any]], Any]]] = None) -> D:
    """Concatenate dataclasses of one type field by field along ``dim``.

    A field that is ``None`` in any item is ``None`` in the result; non-tensor fields are taken from the first
    item unless ``reduce`` names a function combining their values (e.g. ``{"num_samples": sum}``).
    """
    if not items:
        raise ValueError("cat_tensors: nothing to concatenate")
    if len(items) == 1:
        return items[0]
    reduce = reduce or {}
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(items[0]):
        values = [getattr(item, f.name) for item in items]
        if f.name in reduce:
            changes[f.name] = reduce[f.name](values)
        elif any(v is None for v in values):
            changes[f.name] = None
        elif isinstance(values[0], Tensor):
            changes[f.name] = torch.cat(values, dim=dim)
    return dataclasses.replace(items[0], **changes)


def scatter_tensors(items: Sequence[tuple[Any, D]], like: D, shape_of: Callable[[Tensor], tuple[int, ...]]) -> D:
    """Assemble a dataclass whose tensor fields are filled from several pieces: ``full[index] = piece`` for each
    ``(index, piece)`` in ``items`` (``index`` is anything a tensor accepts as a subscript: a slice tuple, an
    index tensor). ``like`` gives dtypes and devices; ``shape_of(t)`` the full shape of a field whose piece is
    ``t``. A field that is ``None`` in ``like`` stays ``None``; non-tensor fields are taken from ``like``."""
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(like):
        first = getattr(like, f.name)
        if not isinstance(first, Tensor):
            continue
        full = first.new_zeros(shape_of(first))
        for index, piece in items:
            full[index] = getattr(piece, f.name).to(full.dtype)
        changes[f.name] = full
    return dataclasses.replace(like, **changes)
