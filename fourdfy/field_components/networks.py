"""Small MLPs (threestudio's ``VanillaMLP``) and the ``get_mlp`` factory."""

from collections.abc import Mapping
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
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

    Precision (:func:`mlp_mode`): with ``precision="fp32"``, and with ``"auto"`` off CUDA, the MLP runs in the
    weights' dtype (float32) with autocast disabled, so mixed-precision training does not change it. ``"fp16"``
    runs the GEMMs in fp16 with fp32 accumulation on any device, in an autocast region of its own, with the backward
    loss-scaled as 4D-fy's tcnn ``FullyFusedMLP`` did (:data:`FP16_GRAD_SCALE`: the gradient entering the MLP is
    multiplied by it before the fp16 GEMMs and the input and weight gradients divided by it after, in fp32, so
    that small per-sample gradients do not flush to fp16 zeros). ``"auto"`` on CUDA follows an ambient autocast
    where one is active (Lightning's ``16-mixed``: the GradScaler guards the backward) and is ``"fp16"`` where none
    is (``trainer.precision: 32``, stages 1-2 and the paper stage 3); ``"autocast"`` follows the ambient autocast on
    every device and is fp32 without one. ``auto`` leaves CPU alone because CPU autocast means bf16 (8 significand
    bits, coarser than fp16's 11) and small reduced-precision GEMMs are often no faster on CPUs without matrix
    units. The output activation is applied to the float32 output, which is returned in every mode.

    Args:
        n_input_dims: input width.
        n_output_dims: output width.
        n_neurons: hidden width.
        n_hidden_layers: number of hidden layers (>= 1).
        activation: hidden activation name (threestudio always uses ReLU; 4D-fy configs say ``ReLU``).
        output_activation: output activation name, ``"none"`` for identity.
        bias: whether the linear layers have biases.
        precision: ``"auto"``, ``"autocast"``, ``"fp16"`` or ``"fp32"`` (see above).
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
        mode = mlp_mode(self.precision, x.device)
        if mode == "fp32":
            with torch.autocast(device_type=x.device.type, enabled=False):
                return self.output_activation(self.layers(x.to(weight_dtype)))
        if mode == "ambient":
            return self.output_activation(self.layers(x.to(weight_dtype)).float())
        return self.output_activation(self._fp16_scaled(x.to(weight_dtype)))

    def _fp16_scaled(self, x: Tensor) -> Tensor:
        """The layers in fp16 with the loss-scaled backward of :data:`FP16_GRAD_SCALE` (float32 in and out)."""
        inverse = 1.0 / FP16_GRAD_SCALE
        h = scale_gradient(x, inverse)
        with torch.autocast(device_type=x.device.type, dtype=torch.float16):
            for layer in self.layers:
                if isinstance(layer, nn.Linear):
                    bias = None if layer.bias is None else scale_gradient(layer.bias, inverse)
                    h = F.linear(h, scale_gradient(layer.weight, inverse), bias)
                else:
                    h = layer(h)
        return scale_gradient(h.float(), FP16_GRAD_SCALE)

    def extra_repr(self) -> str:
        return f"precision={self.precision}"


FP16_GRAD_SCALE = 128.0
"""Loss scale of the ``fp16`` MLP's backward: tcnn's for its fp16 modules (``loss_scale = 128``), which 4D-fy's
``FullyFusedMLP`` trained with. A per-sample gradient of 1e-6 is a subnormal fp16 number (3 significant bits left)
and one under 6e-8 is zero; scaled by 128 both keep fp16's full 11 bits. Gradients above 65504 / 128 = 512 would
overflow to inf (which the divergence guard reports)."""


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``factor``."""

    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:  # type: ignore[override]
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.factor, None


def scale_gradient(x: Tensor, factor: float) -> Tensor:
    """``x`` unchanged, with its gradient multiplied by ``factor`` on the way back."""
    return _ScaleGradient.apply(x, factor)


def mlp_mode(precision: str, device: torch.device) -> str:
    """How an MLP with ``precision`` runs on ``device`` now: ``"fp32"`` (autocast off), ``"ambient"`` (follows the
    active autocast; fp32 without one) or ``"fp16"`` (fp16 GEMMs, loss-scaled backward).

    ``"fp32"``: always fp32; ``"autocast"``: always ambient; ``"fp16"``: always fp16; ``"auto"``: fp32 off CUDA, on
    CUDA ambient inside an autocast region and fp16 outside one.
    """
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return "fp32"
    if precision == "autocast":
        return "ambient"
    if precision == "fp16":
        return "fp16"
    return "ambient" if torch.is_autocast_enabled(device.type) else "fp16"


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
