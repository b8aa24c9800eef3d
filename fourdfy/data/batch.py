"""Typed batches produced by the data module and consumed by the system and the renderers."""

import dataclasses
import enum
from typing import Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor

from fourdfy.utils.tensor_fields import map_tensors
from fourdfy.utils.transfer import to_device


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
    """Cameras and rays of one batch: ``B`` cameras, each rendered at ``H x W`` at each of its ``T`` times.

    Camera ``b`` is rendered at ``times[b, 0..T-1]``: a video clip is one camera (B = 1) with T frames; image
    batches have T = 1 (in dynamic stages every view of a multi-view batch shares one time). Render outputs carry
    the same ``[B, T]`` leading axes.
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
    times: Float[Tensor, "B T"]
    """Times in [0, 1] at which each camera is rendered."""
    height: int
    width: int
    kind: BatchKind
    index: Optional[Int[Tensor, "B"]] = None
    """Index of an evaluation view (file names)."""
    times_video: Optional[Float[Tensor, "Tv"]] = None
    """Evaluation only: times of the validation video (dynamic stages)."""

    @property
    def num_times(self) -> int:
        """``T``: times rendered per camera."""
        return self.times.shape[1]

    @property
    def batch_size(self) -> int:
        """Number of cameras."""
        return self.c2w.shape[0]

    def with_times(self, times: Float[Tensor, "*B T2"]) -> "CameraBatch":
        """The same cameras at other times (``[B, T2]``, or ``[T2]`` for every camera)."""
        if times.dim() == 1:
            times = times[None].expand(self.batch_size, -1)
        return dataclasses.replace(self, times=times)

    def select(self, index: int) -> "CameraBatch":
        """One camera of the batch (with its times)."""
        return map_tensors(self, lambda x: x[index : index + 1], only=CAMERA_FIELDS)

    def to(self, device: torch.device | str) -> "CameraBatch":
        """Move all tensors to ``device`` (from the CPU to CUDA without blocking the host: :func:`to_device`)."""
        return map_tensors(self, lambda x: to_device(x, device))


CAMERA_FIELDS = tuple(
    f.name for f in dataclasses.fields(CameraBatch) if f.name not in ("height", "width", "kind", "times_video")
)
"""Fields with a leading camera axis ``B``."""
