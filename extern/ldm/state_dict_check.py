"""Name/shape comparison of a state dict against a module's expected one, with a readable failure report.

Used before every ``load_state_dict(strict=True)`` so that a wrong checkpoint fails with the offending keys listed
(missing, unexpected, shape-mismatched) instead of PyTorch's generic message. Works on meta tensors.
"""

from collections.abc import Mapping

import torch
from torch import Tensor

# How many keys of each kind to print before summarising with a count.
_LIST_LIMIT = 12


class StateDictMismatchError(ValueError):
    """A state dict does not have exactly the expected names and shapes.

    Attributes:
        missing: expected names that are absent.
        unexpected: names present that the target does not have.
        mismatched: ``(name, found_shape, expected_shape)`` for names present in both with different shapes.
    """

    def __init__(self, message: str, missing: list[str], unexpected: list[str],
                 mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]) -> None:
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched


def _listing(title: str, items: list[str]) -> str:
    shown = "\n    ".join(items[:_LIST_LIMIT])
    more = f"\n    ... and {len(items) - _LIST_LIMIT} more" if len(items) > _LIST_LIMIT else ""
    return f"  {title} ({len(items)}):\n    {shown}{more}"


def check_state_dict(found: Mapping[str, Tensor], expected: Mapping[str, Tensor], what: str) -> None:
    """Raise ``StateDictMismatchError`` unless ``found`` has exactly the names and shapes of ``expected``.

    Args:
        found: the (already renamed) tensors to load.
        expected: the target module's ``state_dict()`` (meta tensors are fine).
        what: human-readable description for the message, e.g. "UNet (model.diffusion_model.*)".
    """
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [
        (name, tuple(found[name].shape), tuple(expected[name].shape))
        for name in sorted(set(found) & set(expected))
        if tuple(found[name].shape) != tuple(expected[name].shape)
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = [f"{what}: the weights do not match the expected architecture."]
    if missing:
        parts.append(_listing("missing keys", missing))
    if unexpected:
        parts.append(_listing("unexpected keys", unexpected))
    if mismatched:
        parts.append(_listing("shape mismatches (found vs expected)",
                              [f"{n}: {list(f)} vs {list(e)}" for n, f, e in mismatched]))
    raise StateDictMismatchError("\n".join(parts), missing, unexpected, mismatched)


def remaining_meta_tensors(module: torch.nn.Module) -> list[str]:
    """Names of parameters and buffers of ``module`` that still live on the meta device (i.e. were never loaded)."""
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    return [name for name, tensor in tensors if tensor.is_meta]
