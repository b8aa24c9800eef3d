"""Regularisers of the 4D-fy system as pure functions (all on rendered quantities)."""

from jaxtyping import Float
from torch import Tensor


def sparsity_loss(opacity: Float[Tensor, "*batch 1"]) -> Float[Tensor, ""]:
    """``mean(sqrt(opacity^2 + 0.01))``: a smooth L1 pulling empty pixels to zero opacity."""
    return (opacity.pow(2) + 0.01).sqrt().mean()


def opaque_loss(opacity: Float[Tensor, "*batch 1"]) -> Float[Tensor, ""]:
    """Mean binary entropy of the (clamped) opacity: pushes every pixel to fully empty or fully opaque."""
    o = opacity.clamp(1.0e-3, 1.0 - 1.0e-3)
    return -(o * o.log() + (1.0 - o) * (1.0 - o).log()).mean()


def z_variance_loss(z_variance: Float[Tensor, "*batch 1"], opacity: Float[Tensor, "*batch 1"]) -> Float[Tensor, ""]:
    """Mean depth variance along the ray over pixels with opacity > 0.5 (zero when there are none)."""
    mask = opacity > 0.5
    if not bool(mask.any()):
        return z_variance.sum() * 0.0
    return z_variance[mask].mean()


def tv_loss(x: Float[Tensor, "C T H W"]) -> Float[Tensor, ""]:
    """4D-fy's total variation of a ``[C, T, H, W]`` map: ``3 * (sum_{t,h,w} mean_C dt^2 + ... dh^2 + ... dw^2)``
    (a *sum* over positions and a mean over channels, times 3)."""
    dt = (x[:, 1:] - x[:, :-1]).pow(2).mean(0).sum()
    dh = (x[:, :, 1:] - x[:, :, :-1]).pow(2).mean(0).sum()
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).mean(0).sum()
    return 3.0 * (dt + dh + dw)
