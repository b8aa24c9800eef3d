"""Typed batches produced by the data module and consumed by the system and the renderers."""

import dataclasses
import enum
from typing import Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor


class BatchKind(enum.Enum):
    """Which guidance a training batch is for; decided once, by the data module."""

    MULTI_VIEW = "multi_view"
    """4 views 90 degrees apart per object (MVDream SDS)."""
    SINGLE_VIEW = "single_view"
    """One camera, one time (VSD with Stable Diffusion)."""
    VIDEO = "video"
    """One camera, ``num_frames`` times (video SDS)."""
    EVAL = "eval"
    """Validation/test cameras."""


@dataclasses.dataclass
class CameraBatch:
    """Cameras and rays of one batch. ``B`` cameras rendered at ``H x W`` and at each of the ``T`` times.

    All B cameras are rendered at every time in ``times``: a video clip is one camera (B = 1) with T frames;
    image batches have T = 1.
    """

    rays_o: Float[Tensor, "B H W 3"]
    """Ray origins (camera positions), world space."""
    rays_d: Float[Tensor, "B H W 3"]
    """Unit ray directions, world space."""
    mvp_mtx: Float[Tensor, "B 4 4"]
    """Projection @ world-to-camera."""
    c2w: Float[Tensor, "B 4 4"]
    """OpenGL camera-to-world matrices."""
    camera_positions: Float[Tensor, "B 3"]
    light_positions: Float[Tensor, "B 3"]
    elevation: Float[Tensor, "B"]
    """Degrees."""
    azimuth: Float[Tensor, "B"]
    """Degrees, in [-180, 180) for training cameras."""
    camera_distances: Float[Tensor, "B"]
    fovy: Float[Tensor, "B"]
    """Vertical field of view, degrees."""
    times: Float[Tensor, "T"]
    """Frame times in [0, 1] to render."""
    height: int
    width: int
    kind: BatchKind
    index: Optional[Int[Tensor, "B"]] = None
    """Index of an evaluation view (file names)."""
    times_video: Optional[Float[Tensor, "Tv"]] = None
    """Evaluation only: times of the validation video (dynamic stages)."""

    @property
    def batch_size(self) -> int:
        """Number of cameras."""
        return self.c2w.shape[0]

    def with_times(self, times: Float[Tensor, "T2"]) -> "CameraBatch":
        """The same cameras at other times."""
        return dataclasses.replace(self, times=times)

    def select(self, index: int) -> "CameraBatch":
        """One camera of the batch (keeps the times)."""
        sl = slice(index, index + 1)
        return dataclasses.replace(
            self,
            rays_o=self.rays_o[sl],
            rays_d=self.rays_d[sl],
            mvp_mtx=self.mvp_mtx[sl],
            c2w=self.c2w[sl],
            camera_positions=self.camera_positions[sl],
            light_positions=self.light_positions[sl],
            elevation=self.elevation[sl],
            azimuth=self.azimuth[sl],
            camera_distances=self.camera_distances[sl],
            fovy=self.fovy[sl],
            index=None if self.index is None else self.index[sl],
        )

    def to(self, device: torch.device) -> "CameraBatch":
        """Move all tensors to ``device``."""
        changes = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return dataclasses.replace(self, **changes)
