"""Renderer base class and the typed render output."""

import dataclasses
from typing import Any, Optional

from jaxtyping import Float
from torch import Tensor, nn

from fourdfy.data.batch import CameraBatch
from fourdfy.geometry.base import BaseGeometry
from fourdfy.utils.base import BaseModule


@dataclasses.dataclass
class RenderOutput:
    """Images rendered for ``B`` cameras at ``T`` times each (``T = 1`` for image batches)."""

    comp_rgb: Float[Tensor, "B T H W 3"]
    """Foreground composited over the background."""
    comp_rgb_fg: Float[Tensor, "B T H W 3"]
    comp_rgb_bg: Float[Tensor, "B T H W 3"]
    opacity: Float[Tensor, "B T H W 1"]
    depth: Float[Tensor, "B T H W 1"]
    """Expected ray distance (not divided by opacity, as in 4D-fy)."""
    z_variance: Float[Tensor, "B T H W 1"]
    deformation: Optional[Float[Tensor, "B T H W 3"]] = None
    """Expected deformation offset per pixel (deformation geometry with the mask renderer)."""
    num_samples: int = 0
    """Samples evaluated (statistics)."""

    def frames(self, name: str = "comp_rgb") -> Tensor:
        """A field with the camera and time axes merged, time-major like 4D-fy's ``[T*B, H, W, C]`` (for T = 1
        or B = 1, which is every training batch, this is simply ``[B*T, H, W, C]``)."""
        value = getattr(self, name)
        return value.transpose(0, 1).reshape(-1, *value.shape[2:])


class Renderer(BaseModule):
    """Renders every camera of a batch at each of its times in one packed pass. The geometry, material and
    background are *not* registered as child modules of the renderer (the system owns them), so each weight
    appears once in the state dict."""

    kind = "renderer"

    @dataclasses.dataclass
    class Config:
        radius: float = 1.0
        """Half-size of the scene's bounding box [-radius, radius]^3."""

    def __init__(
        self, cfg: Any, geometry: BaseGeometry, material: nn.Module, background: nn.Module, path: str = "system.renderer"
    ) -> None:
        nn.Module.__init__(self)
        self._parts = (geometry, material, background)  # a tuple: not registered as submodules
        self.path = path
        self._set_cfg(cfg, path)
        self.configure()

    @property
    def geometry(self) -> BaseGeometry:
        return self._parts[0]

    @property
    def material(self) -> nn.Module:
        return self._parts[1]

    @property
    def background(self) -> nn.Module:
        return self._parts[2]

    def forward(self, batch: CameraBatch, grad_budget: Optional[int] = None) -> RenderOutput:
        """Render camera ``b`` of ``batch`` at each of ``batch.times[b]``; outputs are ``[B, T, H, W, C]``.

        Args:
            batch: cameras, rays and times.
            grad_budget: cap on the samples that carry gradients (low-VRAM renderers; see
                :meth:`gradient_budget`); ``None``: no cap. Renderers without a cap ignore it.
        """
        raise NotImplementedError

    def gradient_budget(self, video: bool) -> Optional[int]:
        """The ``grad_budget`` a training branch should pass (video or image batches); ``None``: no cap."""
        return None
