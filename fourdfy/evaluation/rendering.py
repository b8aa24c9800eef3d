"""Evaluation cameras and the one function that calls the renderer.

The orbit of the CLIP-score protocol (4D-fy's, as restated by TC4D): ``N`` cameras at one elevation and distance,
azimuths equally spaced over a full turn starting at -180 degrees (``-180 + 360 k / N``, so no view is repeated),
all looking at the origin; in a dynamic scene camera ``k`` is rendered at time ``k / (N - 1)`` (one pass of the
motion per turn, like the test video). The motion probe: a few fixed cameras, each rendered at ``T`` times.
"""

import torch
from jaxtyping import Float
from torch import Tensor, nn

from fourdfy.data.batch import BatchKind, CameraBatch
from fourdfy.data.random_camera import make_batch


def orbit_azimuths(num_views: int, start_deg: float = -180.0) -> Float[Tensor, "N"]:
    """``start + 360 k / N`` degrees for ``k = 0..N-1``."""
    return start_deg + 360.0 * torch.arange(num_views, dtype=torch.float32) / num_views


def orbit_times(num_views: int, static: bool) -> Float[Tensor, "N"]:
    """Render time of each orbit view: zeros when static, else ``linspace(0, 1, N)``."""
    if static or num_views == 1:
        return torch.zeros(num_views)
    return torch.linspace(0.0, 1.0, num_views)


def cameras(
    azimuth_deg: Float[Tensor, "N"], elevation_deg: float, distance: float, fovy_deg: float, height: int, width: int
) -> CameraBatch:
    """Cameras at the given azimuths, one elevation, distance and field of view, looking at the origin."""
    n = azimuth_deg.shape[0]
    one = torch.ones(n)
    return make_batch(
        one * elevation_deg, azimuth_deg.float(), one * distance, one * fovy_deg, height, width,
        torch.zeros(1), BatchKind.EVAL, index=torch.arange(n),
    )  # fmt: skip


@torch.no_grad()
def render_frames(renderer: nn.Module, batch: CameraBatch, times: Float[Tensor, "N"]) -> Float[Tensor, "N H W 3"]:
    """Camera ``i`` of ``batch`` rendered at ``times[i]``: the composited RGB in [0, 1] on the CPU.

    This is the only place evaluation calls the renderer: one packed call with per-camera times ``[N, 1]``
    (the renderer chunks the rays itself in eval mode).
    """
    device = next((t.device for t in renderer.buffers()), torch.device("cpu"))
    one_call = batch.with_times(times.reshape(-1, 1).to(batch.times)).to(device)
    return renderer(one_call).comp_rgb[:, 0].float().clamp(0.0, 1.0).cpu()
