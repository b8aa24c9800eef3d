"""``no-material``: colour is the geometry's features through an activation (unlit, 4D-fy's material)."""

import dataclasses
from typing import Optional

from jaxtyping import Float
from torch import Tensor

from fourdfy.field_components.activations import get_activation
from fourdfy.field_components.encoding_configs import parse_mlp_config
from fourdfy.field_components.networks import get_mlp
from fourdfy.registry import register
from fourdfy.utils.base import BaseModule


@register("no-material")
class NoMaterial(BaseModule):
    """``rgb = activation(features)`` or, with ``mlp_network_config``, ``activation(MLP(features))``."""

    kind = "material"

    @dataclasses.dataclass
    class Config:
        n_output_dims: int = 3
        color_activation: str = "sigmoid"
        input_feature_dims: Optional[int] = None
        """Width of the geometry features; required with ``mlp_network_config``."""
        mlp_network_config: Optional[dict] = None
        """Optional MLP between features and colour (unused by 4D-fy)."""

        def __post_init__(self) -> None:
            get_activation(self.color_activation)
            if self.mlp_network_config is not None:
                parse_mlp_config(self.mlp_network_config, "mlp_network_config")
                if self.input_feature_dims is None:
                    raise ValueError("input_feature_dims: required when mlp_network_config is set")

    requires_normal = False

    def configure(self) -> None:
        c = self.cfg
        self.activation = get_activation(c.color_activation)
        self.network = None
        if c.mlp_network_config is not None:
            self.network = get_mlp(c.input_feature_dims, c.n_output_dims, c.mlp_network_config, "system.material.mlp_network_config")

    def forward(self, features: Float[Tensor, "N F"], viewdirs: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        """Colour of samples with ``features`` (view directions are not used by this material)."""
        x = features if self.network is None else self.network(features)
        return self.activation(x[..., : self.cfg.n_output_dims])
