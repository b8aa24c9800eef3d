"""The one table of named activations (``density_activation``, ``color_activation``, MLP ``activation`` and
``output_activation``), looked up case-insensitively; ``None`` means identity."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "none": lambda x: x,
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softplus": F.softplus,
    "exp": torch.exp,
    "exponential": torch.exp,
    "shifted_softplus": lambda x: F.softplus(x - 1.0),
    "scale_-11_01": lambda x: x * 0.5 + 0.5,
}

MLP_ACTIVATIONS: tuple[str, ...] = ("none", "relu", "sigmoid", "tanh", "softplus", "exponential")
"""The names tcnn-style MLP configs accept (tcnn's set)."""


def get_activation(name: str | None) -> Callable[[Tensor], Tensor]:
    """The activation called ``name`` (``None`` means identity)."""
    key = "none" if name is None else name.lower()
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[key]


class Activation(nn.Module):
    """A named activation as a parameter-free module (for ``nn.Sequential`` MLPs)."""

    def __init__(self, name: str | None) -> None:
        super().__init__()
        self.name = "none" if name is None else name.lower()
        self.fn = get_activation(name)

    def extra_repr(self) -> str:
        return self.name

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)
