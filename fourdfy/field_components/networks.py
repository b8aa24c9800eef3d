"""Small MLPs (threestudio's ``VanillaMLP``) and the ``get_mlp`` factory."""

from collections.abc import Mapping
from typing import Any, Optional, Union

import torch
from jaxtyping import Float
from torch import Tensor, nn

from fourdfy.field_components.activations import MLP_ACTIVATIONS, Activation
from fourdfy.field_components.encoding_configs import MLP_PRECISIONS, VanillaMLPConfig, parse_mlp_config

def make_activation(name: Optional[str]) -> nn.Module:
    """Parameter-free activation module for a tcnn/threestudio activation name (``None``/``"none"``: identity).

    Args:
        name: case-insensitive name, one of :data:`~fourdfy.field_components.activations.MLP_ACTIVATIONS`.
    """
    key = "none" if name is None else name.lower()
    if key not in MLP_ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; use one of {', '.join(MLP_ACTIVATIONS)} (case-insensitive)")
    return Activation(key)


class VanillaMLP(nn.Module):
    """``Linear(in, n) -> act -> [Linear(n, n) -> act] x (n_hidden_layers - 1) -> Linear(n, out) -> out_act``.

    Linear layers sit at the even indices of ``layers`` (``layers.0.weight``, ``layers.2.weight``, ...), the
    state-dict layout of 4D-fy checkpoints (``precision`` adds no parameter or buffer). Biases are off by default,
    as in threestudio.

    Precision (:func:`runs_reduced`): with ``precision="fp32"``, and with ``"auto"`` off CUDA, the MLP runs in the
    weights' dtype (float32) with autocast disabled, so mixed-precision training does not change it. With ``"auto"``
    on CUDA, and ``"autocast"`` anywhere, the linear layers run under the ambient autocast: under Lightning's
    ``16-mixed`` the GEMMs take fp16 inputs and accumulate in fp32 (4D-fy ran tcnn's fp16 ``FullyFusedMLP``);
    without an autocast region they run in fp32. ``auto`` leaves CPU alone because CPU autocast means bf16 (8
    significand bits, coarser than fp16's 11) and small bf16 GEMMs are often no faster on CPUs without bf16 matrix
    units. The output activation is applied to the float32 output, which is returned in every mode.

    Args:
        n_input_dims: input width.
        n_output_dims: output width.
        n_neurons: hidden width.
        n_hidden_layers: number of hidden layers (>= 1).
        activation: hidden activation name (threestudio always uses ReLU; 4D-fy configs say ``ReLU``).
        output_activation: output activation name, ``"none"`` for identity.
        bias: whether the linear layers have biases.
        precision: ``"auto"``, ``"autocast"`` or ``"fp32"`` (see above).
    """

    def __init__(
        self,
        n_input_dims: int,
        n_output_dims: int,
        n_neurons: int,
        n_hidden_layers: int,
        activation: str = "ReLU",
        output_activation: Optional[str] = "none",
        bias: bool = False,
        precision: str = "auto",
    ) -> None:
        super().__init__()
        if n_hidden_layers < 1:
            raise ValueError(f"n_hidden_layers must be at least 1, got {n_hidden_layers}")
        if precision not in MLP_PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(MLP_PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.n_input_dims = n_input_dims
        self.n_output_dims = n_output_dims
        layers: list[nn.Module] = [nn.Linear(n_input_dims, n_neurons, bias=bias), make_activation(activation)]
        for _ in range(n_hidden_layers - 1):
            layers += [nn.Linear(n_neurons, n_neurons, bias=bias), make_activation(activation)]
        layers.append(nn.Linear(n_neurons, n_output_dims, bias=bias))
        self.layers = nn.Sequential(*layers)
        self.output_activation = make_activation(output_activation)

    def forward(self, x: Float[Tensor, "*batch I"]) -> Float[Tensor, "*batch O"]:
        """Apply the MLP to ``[..., n_input_dims]`` inputs (precision: see the class docstring)."""
        weight_dtype = self.layers[0].weight.dtype
        if not runs_reduced(self.precision, x.device):
            with torch.autocast(device_type=x.device.type, enabled=False):
                return self.output_activation(self.layers(x.to(weight_dtype)))
        return self.output_activation(self.layers(x.to(weight_dtype)).float())

    def extra_repr(self) -> str:
        return f"precision={self.precision}"


def runs_reduced(precision: str, device: torch.device) -> bool:
    """Whether an MLP with ``precision`` on ``device`` follows the ambient autocast (else: fp32, autocast off).

    ``"autocast"``: always; ``"auto"``: only on CUDA; ``"fp32"``: never.
    """
    return precision == "autocast" or (precision == "auto" and device.type == "cuda")


def get_mlp(
    n_input_dims: int, n_output_dims: int, config: Union[Mapping[str, Any], VanillaMLPConfig], path: str
) -> VanillaMLP:
    """Build an MLP from a tcnn-style network dict (``otype: VanillaMLP``).

    Args:
        n_input_dims: input width.
        n_output_dims: output width.
        config: the raw dict (or parsed :class:`VanillaMLPConfig`).
        path: dotted config location, for error messages.

    Raises:
        ConfigError: unknown otype/key or invalid value, naming the dotted key.
    """
    cfg = parse_mlp_config(config, path)
    return VanillaMLP(
        n_input_dims,
        n_output_dims,
        n_neurons=cfg.n_neurons,
        n_hidden_layers=cfg.n_hidden_layers,
        activation=cfg.activation,
        output_activation=cfg.output_activation,
        bias=cfg.bias,
        precision=cfg.precision,
    )
