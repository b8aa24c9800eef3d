"""MVDream-style multi-view training cameras: groups of ``n_view`` views 90 degrees apart."""

import dataclasses

import torch

from fourdfy.config import ConfigError, ranged
from fourdfy.data import cameras as cam
from fourdfy.data.batch import BatchKind, CameraBatch
from fourdfy.data.random_camera import RandomCameraConfig, RandomCameraSampler


@dataclasses.dataclass
class RandomMultiviewCameraConfig(RandomCameraConfig):
    """Multi-view settings (``data.multi_view``); extends the random-camera settings."""

    relative_radius: bool = True
    """Scale the camera distance with the field of view (MVDream); 4D-fy's configs set false."""
    n_view: int = ranged(1, ge=1)
    """Views per object (4 for MVDream); ``batch_size`` must be a multiple of it."""
    zoom_range: tuple[float, float] = (1.0, 1.0)
    """Random zoom applied to the field of view."""

    def __post_init__(self) -> None:
        super().__post_init__()
        sizes = self.batch_size if isinstance(self.batch_size, list) else [self.batch_size]
        for s in sizes:
            if s % self.n_view != 0:
                raise ConfigError(f"batch_size: {s} is not a multiple of n_view={self.n_view}")


class RandomMultiviewCameraSampler(RandomCameraSampler):
    """Draws multi-view batches: per object one elevation, distance, fovy and one draw of each camera/centre/up
    perturbation (4D-fy's ``random_multiview.py``); azimuths ``(u + k)/n_view * 360``."""

    cfg: RandomMultiviewCameraConfig

    def sample(self) -> CameraBatch:
        """One random batch of ``batch_size / n_view`` objects, views contiguous per object."""
        c = self.cfg
        n_obj = self.batch_size // c.n_view
        elevation = cam.sample_elevation(n_obj, c.elevation_range).repeat_interleave(c.n_view)
        fovy = cam.sample_uniform(n_obj, c.fovy_range).repeat_interleave(c.n_view)
        distance = cam.sample_uniform(n_obj, c.camera_distance_range)
        zoom = cam.sample_uniform(n_obj, c.zoom_range)
        if c.relative_radius:
            # keep the object's apparent size: distance relative to a 1-unit-wide view at this fovy
            scale = 1.0 / torch.tan(0.5 * torch.deg2rad(fovy[:: c.n_view]))
            distance = distance * scale
        distance = distance.repeat_interleave(c.n_view)
        fovy = fovy * zoom.repeat_interleave(c.n_view)
        lo, hi = c.azimuth_range
        u = torch.rand(n_obj)[:, None]
        azimuth = ((u + torch.arange(c.n_view)[None]) / c.n_view * (hi - lo) + lo).reshape(-1)
        times = self.frame_times(keep_all=False)
        return self.perturbed_batch(
            elevation, azimuth, distance, fovy, self.height, self.width, times, BatchKind.MULTI_VIEW,
            views_per_draw=c.n_view,
        )  # fmt: skip
