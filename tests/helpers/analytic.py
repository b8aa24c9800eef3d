"""An analytic scene for photometric fitting tests: a solid sphere coloured by position in front of white.

The sphere may move: ``center(t)`` gives its centre at each time, so the same renderer serves static and dynamic
fits (``times [B, T]`` as in a :class:`~fourdfy.data.batch.CameraBatch`).
"""

from collections.abc import Callable

import torch
from torch import Tensor

Center = Callable[[Tensor], Tensor]


def at_origin(times: Tensor) -> Tensor:
    """A sphere that stays at the origin."""
    return torch.zeros(*times.shape, 3)


def sphere_render(rays_o: Tensor, rays_d: Tensor, times: Tensor, radius: float, center: Center = at_origin) -> Tensor:
    """Colour ``(p - c + 1) / 2`` of the first hit ``p`` on the sphere of centre ``c = center(t)``, white elsewhere.

    Args:
        rays_o, rays_d: ``[B, H, W, 3]`` (unit directions).
        times: ``[B, T]``.

    Returns:
        ``[B, T, H, W, 3]``.
    """
    c = center(times)[:, :, None, None, :]  # [B, T, 1, 1, 3]
    o = rays_o[:, None] - c
    d = rays_d[:, None].expand_as(o)
    b = (o * d).sum(-1)
    disc = b * b - ((o * o).sum(-1) - radius**2)
    hit = disc > 0
    p = o + d * (-b - disc.clamp(min=0).sqrt())[..., None]
    colour = (p + 1.0) / 2.0
    return torch.where(hit[..., None], colour, torch.ones_like(colour))


def psnr(a: Tensor, b: Tensor) -> float:
    """Peak signal-to-noise ratio of images in [0, 1], in dB."""
    return float(-10 * torch.log10(((a - b) ** 2).mean()))
