"""The geometry contract: what renderers, the system and exporters may ask of a field.

A geometry maps world points and times to density and colour features. Time is always an argument (``times``
``[N, 1]`` or ``[1, 1]``, values in [0, 1]); no geometry stores a current frame. Static geometries (stages 1-2)
ignore ``times``.
"""

import dataclasses
from collections.abc import Iterator
from typing import Optional

from jaxtyping import Float
from torch import Tensor, nn

from fourdfy.utils.base import BaseModule


@dataclasses.dataclass
class GeometryOutput:
    """Field values at ``N`` points."""

    density: Float[Tensor, "N 1"]
    features: Float[Tensor, "N F"]
    deformation: Optional[Float[Tensor, "N 3"]] = None
    """Deformation offset (normalised units), deformation fields only."""


class BaseGeometry(BaseModule):
    """A density + feature field over space and time."""

    kind = "geometry"

    def forward(
        self, points: Float[Tensor, "N 3"], times: Float[Tensor, "#N 1"], encoding: Optional[Tensor] = None
    ) -> GeometryOutput:
        """Density and features at world ``points`` and ``times``. ``encoding``: what :meth:`density_and_encoding`
        returned for these same points and times, reused instead of encoding them again (same values, same
        gradients)."""
        raise NotImplementedError

    def density_and_encoding(
        self, points: Float[Tensor, "N 3"], times: Float[Tensor, "#N 1"]
    ) -> tuple[Float[Tensor, "N 1"], Optional[Tensor]]:
        """:meth:`forward_density`, and the points' encoding if :meth:`forward` can reuse it (``None`` if not, the
        default). Called without gradient (the renderer's alpha culling)."""
        return self.forward_density(points, times), None

    def forward_density(self, points: Float[Tensor, "N 3"], times: Float[Tensor, "#N 1"]) -> Float[Tensor, "N 1"]:
        """Density only (occupancy updates, sample culling, mesh extraction)."""
        raise NotImplementedError

    @property
    def is_static(self) -> bool:
        """Whether the field ignores time (its temporal parameters are frozen)."""
        raise NotImplementedError

    def temporal_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the time-dependent part (trained only by the branches that train motion)."""
        raise NotImplementedError
