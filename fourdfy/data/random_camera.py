"""Random single-view (and video) training cameras and the evaluation camera paths (4D-fy's ``uncond.py``)."""

import bisect
import dataclasses
from typing import Optional, Union

import torch
from jaxtyping import Float
from torch import Tensor

from fourdfy.config import ConfigError, choice, ranged
from fourdfy.data import cameras as cam
from fourdfy.data.batch import BatchKind, CameraBatch
from fourdfy.utils.transfer import to_device


@dataclasses.dataclass
class RandomCameraConfig:
    """Random-camera settings (``data.single_view``); defaults are 4D-fy's, configs override most of them."""

    height: Union[int, list[int]] = ranged(64, ge=1)
    """Training image height, or one value per resolution phase (see ``resolution_milestones``)."""
    width: Union[int, list[int]] = ranged(64, ge=1)
    """Training image width, or one value per phase."""
    batch_size: Union[int, list[int]] = ranged(1, ge=1)
    """Cameras per batch, or one value per phase."""
    resolution_milestones: list[int] = dataclasses.field(default_factory=list)
    """Steps at which the next phase starts (the switch happens at the milestone step, inclusive)."""
    eval_height: int = ranged(512, ge=1)
    eval_width: int = ranged(512, ge=1)
    n_val_views: int = ranged(1, ge=1)
    n_test_views: int = ranged(120, ge=1)
    elevation_range: tuple[float, float] = (-10.0, 90.0)
    """Degrees."""
    azimuth_range: tuple[float, float] = (-180.0, 180.0)
    """Degrees."""
    camera_distance_range: tuple[float, float] = (1.0, 1.5)
    fovy_range: tuple[float, float] = (40.0, 70.0)
    """Vertical field of view, degrees."""
    camera_perturb: float = 0.1
    """Half-width of the uniform noise added to each camera-position coordinate: ``U[-p, p]`` (4D-fy's draw)."""
    center_perturb: float = 0.2
    """Std of Gaussian noise added to the look-at point."""
    up_perturb: float = 0.02
    """Std of Gaussian noise added to the up vector."""
    light_position_perturb: float = 1.0
    light_distance_range: tuple[float, float] = (0.8, 1.5)
    eval_elevation_deg: float = 15.0
    eval_camera_distance: float = 1.5
    eval_fovy_deg: float = 70.0
    batch_uniform_azimuth: bool = True
    """Stratify azimuths over the batch."""
    static: bool = True
    """Static scene (stages 1-2): one time, 0."""
    num_frames: int = ranged(1, ge=1)
    """Frames per video clip (dynamic stages)."""
    sample_rand_frames: Optional[str] = choice(None, (None, "t0"), "'t0': clips start at t0 ~ U[0, 1/N).")
    simultan: bool = False
    """Dynamic stages: the single-view branch may draw video clips."""
    prob_single_view_video: Optional[float] = None
    """Probability that a single-view batch is a video clip (when ``simultan``)."""
    width_vid: int = ranged(64, ge=1)
    """Video clip render width."""
    height_vid: int = ranged(64, ge=1)
    """Video clip render height."""
    num_frames_factor: int = ranged(1, ge=1)
    """Evaluation renders ``num_frames * num_frames_factor`` times."""
    test_traj: Optional[str] = choice(None, (None, "motion_smooth", "motion_smooth_full"), "Dynamic test path.")

    def __post_init__(self) -> None:
        phases = len(self.resolution_milestones) + 1
        for name in ("height", "width", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, list) and len(value) not in (1, phases):
                raise ConfigError(
                    f"{name}: {len(value)} values for {phases} resolution phases "
                    f"(resolution_milestones={self.resolution_milestones})"
                )
        if self.prob_single_view_video is not None and not 0.0 <= self.prob_single_view_video <= 1.0:
            raise ConfigError("prob_single_view_video: must be in [0, 1]")
        if self.num_frames < 1:
            raise ConfigError("num_frames: must be >= 1")


def phase_value(value: Union[int, list[int]], milestones: list[int], global_step: int) -> int:
    """The value of a per-phase setting at a step: ``bisect_right([-1] + milestones, step) - 1`` picks the phase."""
    if isinstance(value, int):
        return value
    if len(value) == 1:
        return value[0]
    return value[bisect.bisect_right([-1] + milestones, global_step) - 1]


def make_batch(
    elevation: Float[Tensor, "B"],
    azimuth: Float[Tensor, "B"],
    distance: Float[Tensor, "B"],
    fovy: Float[Tensor, "B"],
    height: int,
    width: int,
    times: Float[Tensor, "T"],
    kind: BatchKind,
    light_positions: Optional[Float[Tensor, "B 3"]] = None,
    center: Optional[Float[Tensor, "B 3"]] = None,
    up: Optional[Float[Tensor, "B 3"]] = None,
    position_noise: Optional[Float[Tensor, "B 3"]] = None,
    index: Optional[Tensor] = None,
    times_video: Optional[Tensor] = None,
    ray_device: Optional[torch.device] = None,
) -> CameraBatch:
    """Build a :class:`CameraBatch` from camera parameters (the shared tail of every sampler); every camera is
    rendered at each of ``times``. The per-pixel rays are computed on ``ray_device`` (default: where the camera
    parameters are), everything else where the parameters are."""
    b = elevation.shape[0]
    positions = cam.spherical_to_position(elevation, azimuth, distance)
    if position_noise is not None:
        positions = positions + position_noise
    center = torch.zeros(b, 3) if center is None else center
    up = torch.tensor([0.0, 0.0, 1.0]).expand(b, 3) if up is None else up
    c2w = cam.look_at_c2w(positions, center, up)
    focal = cam.focal_from_fovy(fovy, height)
    at = c2w.device if ray_device is None else ray_device  # to_device is a no-op where the tensor already is
    rays_o, rays_d = cam.rays_from_c2w(
        cam.camera_ray_directions(height, width, to_device(focal, at)), to_device(c2w, at)
    )
    mvp = cam.mvp_matrix(c2w, cam.projection_matrix(fovy, width / height))
    return CameraBatch(
        rays_o=rays_o,
        rays_d=rays_d,
        mvp_mtx=mvp,
        c2w=c2w,
        camera_positions=positions,
        light_positions=positions.clone() if light_positions is None else light_positions,
        elevation=elevation,
        azimuth=azimuth,
        camera_distances=distance,
        fovy=fovy,
        times=times[None].expand(b, -1),
        height=height,
        width=width,
        kind=kind,
        index=index,
        times_video=times_video,
    )


class RandomCameraSampler:
    """Draws single-view training batches (image, or video clip in dynamic stages)."""

    def __init__(self, cfg: RandomCameraConfig) -> None:
        self.cfg = cfg
        self.ray_device: Optional[torch.device] = None
        """Where :func:`make_batch` builds the rays (None: on the CPU, with the camera parameters)."""
        self.height = phase_value(cfg.height, cfg.resolution_milestones, 0)
        self.width = phase_value(cfg.width, cfg.resolution_milestones, 0)
        self.batch_size = phase_value(cfg.batch_size, cfg.resolution_milestones, 0)

    def update_step(self, global_step: int) -> None:
        """Switch resolution and batch size at the milestones."""
        c = self.cfg
        self.height = phase_value(c.height, c.resolution_milestones, global_step)
        self.width = phase_value(c.width, c.resolution_milestones, global_step)
        self.batch_size = phase_value(c.batch_size, c.resolution_milestones, global_step)

    def wants_video(self) -> bool:
        """Whether this draw is a video clip (tosses the coin when the stage allows video)."""
        c = self.cfg
        if c.static or not c.simultan or c.prob_single_view_video is None:
            return False
        return torch.rand(()).item() < c.prob_single_view_video

    def sample(self) -> CameraBatch:
        """One random batch."""
        c = self.cfg
        is_video = self.wants_video()
        b = self.batch_size
        elevation = cam.sample_elevation(b, c.elevation_range)
        if c.batch_uniform_azimuth:
            azimuth = cam.stratified_azimuth(b, c.azimuth_range)
        else:
            azimuth = cam.sample_uniform(b, c.azimuth_range)
        distance = cam.sample_uniform(b, c.camera_distance_range)
        fovy = cam.sample_uniform(b, c.fovy_range)
        times = self.frame_times(keep_all=is_video)
        height, width = (c.height_vid, c.width_vid) if is_video else (self.height, self.width)
        kind = BatchKind.VIDEO if is_video else BatchKind.SINGLE_VIEW
        return self.perturbed_batch(elevation, azimuth, distance, fovy, height, width, times, kind)

    def frame_times(self, keep_all: bool) -> Tensor:
        """The clip's frame times; an image step of a dynamic stage renders one of them, drawn at random (4D-fy).
        Static stages: ``[0.]``."""
        c = self.cfg
        n_times = 1 if c.static else c.num_frames
        times = cam.frame_times(n_times, None if c.static else c.sample_rand_frames)
        if not keep_all and n_times > 1:
            times = times[torch.randint(n_times, (1,))]
        return times

    def perturbed_batch(
        self, elevation: Tensor, azimuth: Tensor, distance: Tensor, fovy: Tensor, height: int, width: int,
        times: Tensor, kind: BatchKind, views_per_draw: int = 1,
    ) -> CameraBatch:  # fmt: skip
        """Apply the configured perturbations (as 4D-fy: camera position ``U[-p, p]`` per coordinate, centre and
        up Gaussian), draw the lights and build the batch. ``views_per_draw`` consecutive cameras share one draw
        of each perturbation (the views of one multi-view object)."""
        c = self.cfg
        b = elevation.shape[0]
        n = b // views_per_draw

        def per_view(x: Tensor) -> Tensor:
            return x.repeat_interleave(views_per_draw, dim=0)

        noise = per_view((torch.rand(n, 3) * 2.0 - 1.0) * c.camera_perturb)
        center = per_view(torch.randn(n, 3) * c.center_perturb)
        up = torch.tensor([0.0, 0.0, 1.0])[None] + per_view(torch.randn(n, 3) * c.up_perturb)
        positions = cam.spherical_to_position(elevation, azimuth, distance) + noise
        light = cam.light_positions_dreamfusion(positions, c.light_distance_range, c.light_position_perturb)
        return make_batch(
            elevation, azimuth, distance, fovy, height, width, times, kind,
            light_positions=light, center=center, up=up, position_noise=noise, ray_device=self.ray_device,
        )  # fmt: skip
