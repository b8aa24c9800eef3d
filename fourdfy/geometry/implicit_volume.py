"""``implicit-volume``: a density + feature field on a space-time hash-grid encoding (4D-fy's geometry).

``enc = encoding(p_unit, times)`` with ``p_unit`` the point mapped from the box ``[-radius, radius]^3`` to
``[0, 1]^3``; ``density = activation(density_network(enc) + bias(p))`` with Magic3D's blob bias
``scale * (1 - |p| / std)``; ``features = feature_network(enc)`` (colour before the material's activation).
"""

import dataclasses
from collections.abc import Iterator
from typing import Optional

import torch
from jaxtyping import Float
from torch import Tensor, nn

from fourdfy.config import ConfigError, choice
from fourdfy.field_components.activations import get_activation
from fourdfy.field_components.encoding_configs import parse_encoding_config, parse_mlp_config
from fourdfy.field_components.encodings import CompositeEncoding, get_encoding
from fourdfy.field_components.networks import get_mlp
from fourdfy.registry import register
from fourdfy.geometry.base import BaseGeometry, GeometryOutput

DEFAULT_POS_ENCODING = {
    "otype": "HashGridSpatialTime",
    "n_levels": 16,
    "n_features_per_level": 2,
    "log2_hashmap_size": 19,
    "base_resolution": 16,
    "per_level_scale": 1.447269237440378,
    "static": True,
}
DEFAULT_MLP = {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none", "n_neurons": 64, "n_hidden_layers": 1}


@dataclasses.dataclass
class BlobAnnealConfig:
    """Linear annealing of ``density_blob_std`` between two steps (stage 3)."""

    min_anneal_step: int = 0
    max_anneal_step: int = 50000
    start_val: float = 0.5
    end_val: float = 0.5


@register("implicit-volume")
class ImplicitVolume(BaseGeometry):
    """Density and colour features from a (space-time) hash grid and two small bias-free MLPs."""

    @dataclasses.dataclass
    class Config:
        radius: float = 1.0
        """The field lives in ``[-radius, radius]^3``."""
        n_input_dims: int = 3
        n_feature_dims: int = 3
        """Width of the feature output (3 = RGB before activation)."""
        density_activation: str = "softplus"
        density_bias: str = choice("blob_magic3d", ("blob_magic3d", "blob_dreamfusion", "none"), "Density prior.")
        density_blob_scale: float = 10.0
        density_blob_std: float = 0.5
        pos_encoding_config: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_POS_ENCODING))
        """tcnn-style encoding dict (``HashGridSpatialTime`` or ``HashGridSpatialTimeDeform``)."""
        mlp_network_config: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_MLP))
        """tcnn-style dict of both MLPs. A dict without ``otype`` amends the default MLP (threestudio merged config
        dicts into the defaults), so ``system.geometry.mlp_network_config.precision=fp32`` alone is enough."""
        anneal_density_blob_std_config: Optional[BlobAnnealConfig] = None
        """Anneal the blob width (4D-fy's stage 3). Unlike threestudio, the annealed value is really used."""
        # isosurface settings: read by mesh export (``--export``, fourdfy.exporters.mesh_exporter)
        isosurface: bool = True
        """Accepted for 4D-fy configs; no effect (export always extracts a surface)."""
        isosurface_method: str = "mt"
        """Accepted for 4D-fy configs; export always runs marching cubes on a regular grid (threestudio's
        ``mc-cpu``): ``mt`` needs tetrahedra files that 4D-fy does not ship."""
        isosurface_resolution: int = 128
        """Grid corners per axis over ``[-radius, radius]^3`` for marching cubes."""
        isosurface_threshold: float = 25.0
        """Density level of the exported surface (density units, after ``density_activation``)."""
        isosurface_chunk: int = 0
        """Points per field evaluation during export (0: 2^18); changes memory use, not the result."""
        isosurface_coarse_to_fine: bool = True
        """Accepted for 4D-fy configs; no effect (marching tetrahedra only)."""
        isosurface_deformable_grid: bool = False
        """Accepted for 4D-fy configs; no effect (marching tetrahedra only)."""
        isosurface_remove_outliers: bool = True
        """Drop small connected components of the exported mesh."""
        isosurface_outlier_n_faces_threshold: float = 0.01
        """Components with fewer faces are dropped: a fraction of all faces when < 1, a face count otherwise."""

        def __post_init__(self) -> None:
            get_activation(self.density_activation)
            # validate the tcnn-style dicts now, so a typo fails before anything is built
            parse_encoding_config(self.pos_encoding_config, "pos_encoding_config")
            if isinstance(self.mlp_network_config, dict) and "otype" not in self.mlp_network_config:
                self.mlp_network_config = {**DEFAULT_MLP, **self.mlp_network_config}
            parse_mlp_config(self.mlp_network_config, "mlp_network_config")
            if self.n_input_dims != 3:
                raise ConfigError("n_input_dims: only 3 is supported")

    def configure(self) -> None:
        c = self.cfg
        self.encoding = CompositeEncoding(
            get_encoding(c.n_input_dims, c.pos_encoding_config, "system.geometry.pos_encoding_config")
        )
        width = self.encoding.n_output_dims
        self.density_network = get_mlp(width, 1, c.mlp_network_config, "system.geometry.mlp_network_config")
        self.feature_network = get_mlp(width, c.n_feature_dims, c.mlp_network_config, "system.geometry.mlp_network_config")
        r = c.radius
        self.register_buffer("bbox", torch.tensor([[-r, -r, -r], [r, r, r]], dtype=torch.float32))
        self.density_blob_std = c.density_blob_std
        self.density_act = get_activation(c.density_activation)

    @property
    def is_static(self) -> bool:
        """Whether the scene is static (stages 1-2): time is ignored and the temporal parameters are frozen."""
        return bool(self.encoding.encoding.static)

    def temporal_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the time-dependent part of the field."""
        return self.encoding.encoding.temporal_parameters()

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        a = self.cfg.anneal_density_blob_std_config
        if a is not None and a.min_anneal_step <= global_step <= a.max_anneal_step:
            frac = (global_step - a.min_anneal_step) / max(a.max_anneal_step - a.min_anneal_step, 1)
            self.density_blob_std = a.start_val + frac * (a.end_val - a.start_val)

    def density_bias(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N 1"]:
        """The density prior at world points."""
        c = self.cfg
        if c.density_bias == "blob_magic3d":
            return c.density_blob_scale * (1.0 - points.norm(dim=-1, keepdim=True) / self.density_blob_std)
        if c.density_bias == "blob_dreamfusion":
            return c.density_blob_scale * torch.exp(
                -0.5 * points.pow(2).sum(dim=-1, keepdim=True) / self.density_blob_std**2
            )
        return torch.zeros_like(points[..., :1])

    def _unit(self, points: Tensor) -> Tensor:
        lo, hi = self.bbox[0], self.bbox[1]
        return (points - lo) / (hi - lo)

    def _encode(self, points: Tensor, times: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        return self.encoding(self._unit(points), times)

    def _density(self, points: Tensor, enc: Tensor) -> Tensor:
        raw = self.density_network(enc)
        return self.density_act(raw + self.density_bias(points).to(raw.dtype))

    def forward(
        self, points: Float[Tensor, "N 3"], times: Float[Tensor, "#N 1"], encoding: Optional[Tensor] = None
    ) -> GeometryOutput:
        """Density and features at world ``points`` and ``times`` (in [0, 1]). ``encoding`` (from
        :meth:`density_and_encoding` at the same points and times) replaces the grids' forward: the values are
        taken as they are and the grids' backward is attached to them."""
        if encoding is None:
            enc, deformation = self._encode(points, times)
        else:
            enc, deformation = self.encoding.attach_gradient(self._unit(points), times, encoding), None
        density = self._density(points, enc)
        return GeometryOutput(density=density, features=self.feature_network(enc), deformation=deformation)

    def forward_density(self, points: Float[Tensor, "N 3"], times: Float[Tensor, "#N 1"]) -> Float[Tensor, "N 1"]:
        """Density only (occupancy updates and sample culling)."""
        enc, _ = self._encode(points, times)
        return self._density(points, enc)

    def density_and_encoding(
        self, points: Float[Tensor, "N 3"], times: Float[Tensor, "#N 1"]
    ) -> tuple[Float[Tensor, "N 1"], Optional[Tensor]]:
        """Density, and the encoding when :meth:`forward` can reuse it: a space-time grid without deformation on
        the torch or Triton path (the deformation variant's grid input depends on trained weights, and tcnn's
        backward needs its own forward)."""
        enc, deformation = self._encode(points, times)
        reusable = deformation is None and self.encoding.can_attach_gradient(points)
        return self._density(points, enc), (enc.detach() if reusable else None)
