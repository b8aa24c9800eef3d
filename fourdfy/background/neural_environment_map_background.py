"""``neural-environment-map-background``: a colour per ray direction from a small MLP on spherical harmonics."""

import dataclasses
from typing import Optional

import torch
from jaxtyping import Float
from torch import Tensor

from fourdfy.config import ConfigError
from fourdfy.field_components.activations import get_activation
from fourdfy.field_components.encoding_configs import parse_encoding_config, parse_mlp_config
from fourdfy.field_components.encodings import get_encoding
from fourdfy.field_components.networks import get_mlp
from fourdfy.registry import register
from fourdfy.utils.base import BaseModule


@register("neural-environment-map-background")
class NeuralEnvironmentMapBackground(BaseModule):
    """``colour = act(MLP(SH((d + 1) / 2)))`` for unit directions ``d``.

    With ``random_aug`` (training only), each call replaces the whole background, with probability
    ``random_aug_prob``, by one uniformly random colour: the object cannot hide behind a learned backdrop.
    """

    kind = "background"

    @dataclasses.dataclass
    class Config:
        n_output_dims: int = 3
        color_activation: str = "sigmoid"
        dir_encoding_config: dict = dataclasses.field(
            default_factory=lambda: {"otype": "SphericalHarmonics", "degree": 3}
        )
        mlp_network_config: dict = dataclasses.field(
            default_factory=lambda: {"otype": "VanillaMLP", "activation": "ReLU", "n_neurons": 16, "n_hidden_layers": 2}
        )
        random_aug: bool = False
        """Replace the background by a random colour in training (per call, with ``random_aug_prob``)."""
        random_aug_prob: float = 0.5
        eval_color: Optional[tuple[float, float, float]] = None
        """A fixed colour in evaluation instead of the learned one."""

        def __post_init__(self) -> None:
            get_activation(self.color_activation)
            parse_encoding_config(self.dir_encoding_config, "dir_encoding_config")
            parse_mlp_config(self.mlp_network_config, "mlp_network_config")
            if not 0.0 <= self.random_aug_prob <= 1.0:
                raise ConfigError("random_aug_prob: must be in [0, 1]")

    def configure(self) -> None:
        c = self.cfg
        self.encoding = get_encoding(3, c.dir_encoding_config, "system.background.dir_encoding_config")
        self.network = get_mlp(self.encoding.n_output_dims, c.n_output_dims, c.mlp_network_config, "system.background.mlp_network_config")
        self.activation = get_activation(c.color_activation)

    def forward(self, dirs: Float[Tensor, "N 3"]) -> Float[Tensor, "N C"]:
        """Background colour for unit ray directions."""
        c = self.cfg
        if not self.training and c.eval_color is not None:
            return torch.tensor(c.eval_color, dtype=dirs.dtype, device=dirs.device).expand(dirs.shape[0], -1)
        color = self.activation(self.network(self.encoding((dirs + 1.0) / 2.0)))
        if self.training and c.random_aug and torch.rand(()).item() < c.random_aug_prob:
            random = torch.rand(1, c.n_output_dims, dtype=color.dtype, device=color.device)
            # keep the graph connected (zero gradient) so the parameters always receive a gradient tensor
            color = color * 0.0 + random.expand_as(color)
        return color
