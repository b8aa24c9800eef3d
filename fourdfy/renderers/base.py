"""Renderer base class and the typed render output."""

import dataclasses
from typing import Any, Optional

import torch
from jaxtyping import Float
from torch import Tensor, nn

from fourdfy.data.batch import CameraBatch
from fourdfy.utils.base import BaseModule


@dataclasses.dataclass
class RenderOutput:
    """Images rendered for ``N`` cameras (or camera-time pairs)."""

    comp_rgb: Float[Tensor, "N H W 3"]
    """Foreground composited over the background."""
    comp_rgb_fg: Float[Tensor, "N H W 3"]
    comp_rgb_bg: Float[Tensor, "N H W 3"]
    opacity: Float[Tensor, "N H W 1"]
    depth: Float[Tensor, "N H W 1"]
    """Expected ray distance (not divided by opacity, as in 4D-fy)."""
    z_variance: Float[Tensor, "N H W 1"]
    deformation: Optional[Float[Tensor, "N H W 3"]] = None
    """Expected deformation offset per pixel (deformation geometry with the mask renderer)."""
    num_samples: int = 0
    """Samples evaluated (statistics)."""

    @staticmethod
    def cat(outputs: list["RenderOutput"]) -> "RenderOutput":
        """Concatenate along the first axis (e.g. the frames of a clip)."""
        if len(outputs) == 1:
            return outputs[0]
        fields: dict[str, Any] = {}
        for f in dataclasses.fields(RenderOutput):
            values = [getattr(o, f.name) for o in outputs]
            if f.name == "num_samples":
                fields[f.name] = sum(values)
            elif any(v is None for v in values):
                fields[f.name] = None
            else:
                fields[f.name] = torch.cat(values, dim=0)
        return RenderOutput(**fields)


class Renderer(BaseModule):
    """Renders a camera batch at one time. The geometry, material and background are *not* registered as child
    modules of the renderer (the system owns them), so each weight appears once in the state dict."""

    kind = "renderer"

    @dataclasses.dataclass
    class Config:
        radius: float = 1.0
        """Half-size of the scene's bounding box [-radius, radius]^3."""

    def __init__(self, cfg: Any, geometry: nn.Module, material: nn.Module, background: nn.Module, path: str = "system.renderer") -> None:
        nn.Module.__init__(self)
        self._parts = (geometry, material, background)  # a tuple: not registered as submodules
        self.path = path
        self._set_cfg(cfg, path)
        self.configure()

    @property
    def geometry(self) -> nn.Module:
        return self._parts[0]

    @property
    def material(self) -> nn.Module:
        return self._parts[1]

    @property
    def background(self) -> nn.Module:
        return self._parts[2]

    def forward(self, batch: CameraBatch, time: float) -> RenderOutput:
        """Render every camera of ``batch`` at ``time`` (in [0, 1])."""
        raise NotImplementedError
