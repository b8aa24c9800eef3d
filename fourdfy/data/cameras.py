"""Camera math as pure functions.

Conventions (threestudio's, which 4D-fy and MVDream share):

- World is z-up. A camera at elevation ``e`` and azimuth ``a`` (degrees) and distance ``d`` sits at
  ``d * (cos e cos a, cos e sin a, sin e)`` and looks at the origin.
- Camera-to-world matrices ``c2w`` are OpenGL-style: columns ``[right, up, -lookat | position]`` (the camera looks
  down its -z axis, +y is up in the image).
- Pixel ``(i, j)`` (column, row) has camera-space direction ``((i + 0.5 - W/2)/f, -(j + 0.5 - H/2)/f, -1)`` with
  focal ``f = 0.5 H / tan(fovy / 2)``.
- ``mvp`` uses an OpenGL projection with near 0.1, far 1000 and a flipped y axis (nvdiffrast convention).
"""

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor


def spherical_to_position(
    elevation_deg: Float[Tensor, "B"], azimuth_deg: Float[Tensor, "B"], distance: Float[Tensor, "B"]
) -> Float[Tensor, "B 3"]:
    """Camera position on a z-up sphere.

    Example:
        elevation 0, azimuth 0, distance 3 gives (3, 0, 0); elevation 90 gives (0, 0, 3).
    """
    e = torch.deg2rad(elevation_deg)
    a = torch.deg2rad(azimuth_deg)
    return torch.stack([distance * e.cos() * a.cos(), distance * e.cos() * a.sin(), distance * e.sin()], dim=-1)


def look_at_c2w(
    position: Float[Tensor, "B 3"], center: Float[Tensor, "B 3"], up: Float[Tensor, "B 3"]
) -> Float[Tensor, "B 4 4"]:
    """OpenGL camera-to-world matrix of a camera at ``position`` looking at ``center``.

    ``right = normalize(lookat x up)``, ``up' = normalize(right x lookat)``, columns ``[right, up', -lookat, pos]``.
    """
    lookat = F.normalize(center - position, dim=-1)
    right = F.normalize(torch.cross(lookat, up, dim=-1), dim=-1)
    up2 = F.normalize(torch.cross(right, lookat, dim=-1), dim=-1)
    c2w = torch.zeros(position.shape[0], 4, 4, dtype=position.dtype, device=position.device)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = up2
    c2w[:, :3, 2] = -lookat
    c2w[:, :3, 3] = position
    c2w[:, 3, 3] = 1.0
    return c2w


def focal_from_fovy(fovy_deg: Float[Tensor, "B"], height: int) -> Float[Tensor, "B"]:
    """Focal length in pixels for a vertical field of view: ``0.5 H / tan(fovy / 2)``."""
    return 0.5 * height / torch.tan(0.5 * torch.deg2rad(fovy_deg))


def camera_ray_directions(height: int, width: int, focal: Float[Tensor, "B"]) -> Float[Tensor, "B H W 3"]:
    """Unnormalised camera-space ray directions through pixel centres (see module docstring)."""
    j, i = torch.meshgrid(
        torch.arange(height, dtype=focal.dtype, device=focal.device) + 0.5,
        torch.arange(width, dtype=focal.dtype, device=focal.device) + 0.5,
        indexing="ij",
    )
    f = focal[:, None, None]
    x = (i[None] - width / 2) / f
    y = -(j[None] - height / 2) / f
    return torch.stack([x, y, -torch.ones_like(x)], dim=-1)


def rays_from_c2w(
    directions: Float[Tensor, "B H W 3"], c2w: Float[Tensor, "B 4 4"]
) -> tuple[Float[Tensor, "B H W 3"], Float[Tensor, "B H W 3"]]:
    """World-space rays: origins at the camera position and unit directions rotated by ``c2w``."""
    rays_d = torch.einsum("bhwj,bij->bhwi", directions, c2w[:, :3, :3])
    rays_d = F.normalize(rays_d, dim=-1)
    rays_o = c2w[:, None, None, :3, 3].expand_as(rays_d)
    return rays_o, rays_d


def projection_matrix(
    fovy_deg: Float[Tensor, "B"], aspect_wh: float, near: float = 0.1, far: float = 1000.0
) -> Float[Tensor, "B 4 4"]:
    """OpenGL perspective projection with the y axis flipped (image rows grow downwards)."""
    t = torch.tan(0.5 * torch.deg2rad(fovy_deg))
    proj = torch.zeros(fovy_deg.shape[0], 4, 4, dtype=fovy_deg.dtype, device=fovy_deg.device)
    proj[:, 0, 0] = 1.0 / (t * aspect_wh)
    proj[:, 1, 1] = -1.0 / t
    proj[:, 2, 2] = -(far + near) / (far - near)
    proj[:, 2, 3] = -2.0 * far * near / (far - near)
    proj[:, 3, 2] = -1.0
    return proj


def mvp_matrix(c2w: Float[Tensor, "B 4 4"], proj: Float[Tensor, "B 4 4"]) -> Float[Tensor, "B 4 4"]:
    """``proj @ w2c`` with ``w2c`` the rigid inverse of ``c2w``."""
    rot = c2w[:, :3, :3]
    w2c = torch.zeros_like(c2w)
    w2c[:, :3, :3] = rot.transpose(1, 2)
    w2c[:, :3, 3:] = -rot.transpose(1, 2) @ c2w[:, :3, 3:]
    w2c[:, 3, 3] = 1.0
    return proj @ w2c


def sample_elevation(
    batch: int, elevation_range: tuple[float, float], generator: torch.Generator | None = None
) -> Float[Tensor, "B"]:
    """4D-fy's elevation draw: with probability 1/2 uniform in degrees, otherwise uniform on the sphere band.

    The coin is tossed once per batch (all cameras of one batch use the same rule), as in 4D-fy.
    """
    e0, e1 = elevation_range
    if torch.rand((), generator=generator).item() < 0.5:
        return torch.rand(batch, generator=generator) * (e1 - e0) + e0
    lo, hi = (e0 + 90.0) / 180.0, (e1 + 90.0) / 180.0
    u = torch.rand(batch, generator=generator) * (hi - lo) + lo
    return torch.rad2deg(torch.asin(2.0 * u - 1.0))


def sample_uniform(batch: int, value_range: tuple[float, float], generator: torch.Generator | None = None) -> Tensor:
    """Uniform draw in ``[lo, hi)`` for ``batch`` cameras."""
    lo, hi = value_range
    return torch.rand(batch, generator=generator) * (hi - lo) + lo


def stratified_azimuth(
    batch: int, azimuth_range: tuple[float, float], generator: torch.Generator | None = None
) -> Float[Tensor, "B"]:
    """Azimuths spread over the range: camera ``k`` gets ``(u_k + k) / B`` of it (4D-fy's batch_uniform_azimuth)."""
    lo, hi = azimuth_range
    u = torch.rand(batch, generator=generator)
    return (u + torch.arange(batch)) / batch * (hi - lo) + lo


def light_positions_dreamfusion(
    camera_positions: Float[Tensor, "B 3"],
    light_distance_range: tuple[float, float],
    light_position_perturb: float,
    generator: torch.Generator | None = None,
) -> Float[Tensor, "B 3"]:
    """DreamFusion-style light: near the camera direction, at a random distance (unused by unlit materials)."""
    b = camera_positions.shape[0]
    noise = torch.randn(b, 3, generator=generator) * light_position_perturb
    direction = F.normalize(camera_positions + noise, dim=-1)
    return direction * sample_uniform(b, light_distance_range, generator)[:, None]


def frame_times(num_frames: int, mode: str | None, generator: torch.Generator | None = None) -> Float[Tensor, "T"]:
    """Times of the frames of one training clip in [0, 1].

    ``mode == "t0"``: ``t0 ~ U[0, 1/N)`` and ``linspace(t0, t0 + (N-1)/N, N)`` (spacing exactly 1/N).
    Otherwise ``linspace(0, 1, N)``; a static stage has N = 1 and gets ``[0.0]``.
    """
    if mode == "t0":
        t0 = torch.rand((), generator=generator) / num_frames
        return torch.linspace(0.0, (num_frames - 1) / num_frames, num_frames) + t0
    if mode is not None:
        raise ValueError(f"sample_rand_frames: unknown mode {mode!r}; use 't0' or null")
    return torch.linspace(0.0, 1.0, num_frames)


def fovy_to_rad(fovy_deg: float) -> float:
    """Degrees to radians (helper for docs/tests)."""
    return fovy_deg * math.pi / 180.0
