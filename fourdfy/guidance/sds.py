"""Score-distillation math shared by every guidance, as pure functions.

Notation: ``z`` latents, ``t`` integer timesteps, ``a_t = alphas_cumprod[t]`` (written ᾱ_t), ``eps`` the noise
that was added, ``eps_hat`` the guided noise prediction.

The losses use the "target" form ``0.5 * sum((z - sg(target))**2) / B``, whose gradient with respect to ``z`` is
exactly ``(z - target) / B``. With ``target = z - g`` this puts the score-distillation gradient ``g / B`` on the
latents without back-propagating through the diffusion network (``sg`` = stop-gradient).
"""

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from fourdfy.schedule import scheduled_value


def step_range(
    min_step_percent: object, max_step_percent: object, epoch: int, global_step: int, num_train_timesteps: int = 1000
) -> tuple[int, int]:
    """Integer timestep bounds ``int(T * C(pct))`` at a training position (4D-fy's ``set_min_max_steps``)."""
    lo = int(num_train_timesteps * scheduled_value(min_step_percent, epoch, global_step))
    hi = int(num_train_timesteps * scheduled_value(max_step_percent, epoch, global_step))
    return lo, hi


def annealed_step_range(cfg: object, epoch: int, global_step: int, num_train_timesteps: int, annealed: bool = False) -> tuple[int, int]:
    """:func:`step_range` of a guidance config's ``min_step_percent``/``max_step_percent``; past
    ``anneal_start_step`` (or when ``annealed``) the max is ``int(T * max_step_percent_annealed)`` (threestudio's
    anneal of the VSD and video guidances)."""
    lo, hi = step_range(cfg.min_step_percent, cfg.max_step_percent, epoch, global_step, num_train_timesteps)
    start = cfg.anneal_start_step
    if annealed or (start is not None and global_step > start):
        hi = int(num_train_timesteps * cfg.max_step_percent_annealed)
    return lo, hi


def sample_timesteps(
    n: int, min_step: int, max_step: int, device: torch.device, generator: torch.Generator | None = None
) -> Int[Tensor, "n"]:
    """``n`` timesteps uniform on the inclusive range ``[min_step, max_step]``."""
    if max_step < min_step:
        raise ValueError(f"max_step ({max_step}) < min_step ({min_step})")
    return torch.randint(min_step, max_step + 1, (n,), device=device, generator=generator)


def q_sample(
    x0: Float[Tensor, "B *rest"], alphas_cumprod_t: Float[Tensor, "B"], noise: Float[Tensor, "B *rest"]
) -> Float[Tensor, "B *rest"]:
    """Forward diffusion ``x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) eps``."""
    a = alphas_cumprod_t.reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return a.sqrt() * x0 + (1.0 - a).sqrt() * noise


def predict_start_from_noise(
    x_t: Float[Tensor, "B *rest"], alphas_cumprod_t: Float[Tensor, "B"], eps: Float[Tensor, "B *rest"]
) -> Float[Tensor, "B *rest"]:
    """``x0 = sqrt(1/ᾱ_t) x_t - sqrt(1/ᾱ_t - 1) eps`` (inverse of :func:`q_sample` for known noise)."""
    a = alphas_cumprod_t.reshape(-1, *([1] * (x_t.dim() - 1))).to(x_t.dtype)
    return (1.0 / a).sqrt() * x_t - (1.0 / a - 1.0).sqrt() * eps


def v_to_eps(
    v: Float[Tensor, "B *rest"], x_t: Float[Tensor, "B *rest"], alphas_cumprod_t: Float[Tensor, "B"]
) -> Float[Tensor, "B *rest"]:
    """Noise from a v-prediction: ``eps = sqrt(1 - ᾱ_t) x_t + sqrt(ᾱ_t) v``."""
    a = alphas_cumprod_t.reshape(-1, *([1] * (x_t.dim() - 1))).to(x_t.dtype)
    return (1.0 - a).sqrt() * x_t + a.sqrt() * v


PREDICTION_TYPES = ("epsilon", "v_prediction")
"""What a diffusion UNet may predict."""


def model_output_to_eps(
    out: Float[Tensor, "B *rest"],
    z_t: Float[Tensor, "B *rest"],
    alphas_cumprod_t: Float[Tensor, "B"],
    prediction_type: str,
) -> Float[Tensor, "B *rest"]:
    """Noise prediction from a UNet output of the given prediction type (``epsilon`` or ``v_prediction``)."""
    if prediction_type == "epsilon":
        return out
    if prediction_type == "v_prediction":
        return v_to_eps(out, z_t, alphas_cumprod_t)
    raise ValueError(f"prediction_type: {prediction_type!r} is not one of {PREDICTION_TYPES}")


def velocity(
    x0: Float[Tensor, "B *rest"], noise: Float[Tensor, "B *rest"], alphas_cumprod_t: Float[Tensor, "B"]
) -> Float[Tensor, "B *rest"]:
    """The v-prediction target ``v = sqrt(ᾱ_t) eps - sqrt(1 - ᾱ_t) x0``."""
    a = alphas_cumprod_t.reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return a.sqrt() * noise - (1.0 - a).sqrt() * x0


def cfg_uncond_anchor(eps_cond: Tensor, eps_uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance ``eps_u + s (eps_c - eps_u)`` (MVDream, Stable Diffusion)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def cfg_cond_anchor(eps_cond: Tensor, eps_uncond: Tensor, scale: float) -> Tensor:
    """4D-fy's video-model guidance ``eps_c + s (eps_c - eps_u)`` (i.e. scale ``s + 1`` in the usual form)."""
    return eps_cond + scale * (eps_cond - eps_uncond)


def rescale_x0_std(
    x0: Float[Tensor, "B C H W"], x0_cond: Float[Tensor, "B C H W"], n_view: int, rescale: float
) -> Float[Tensor, "B C H W"]:
    """MVDream's CFG rescale of the reconstructed ``x0``, per object (group of ``n_view`` consecutive views).

    ``factor = (std(x0_cond) + 1e-8) / (std(x0) + 1e-8)`` with the std over (views, C, H, W) of one object, then
    ``x0 <- rescale * factor * x0 + (1 - rescale) * x0``.
    """
    b = x0.shape[0]
    if b % n_view != 0:
        raise ValueError(f"batch of {b} latents is not a multiple of n_view={n_view}")
    grouped = x0.reshape(b // n_view, -1)
    grouped_c = x0_cond.reshape(b // n_view, -1)
    factor = (grouped_c.std(dim=1, keepdim=True) + 1e-8) / (grouped.std(dim=1, keepdim=True) + 1e-8)
    out = rescale * (grouped * factor) + (1.0 - rescale) * grouped
    return out.reshape_as(x0)


def target_loss(latents: Float[Tensor, "B *rest"], target: Float[Tensor, "B *rest"]) -> Float[Tensor, ""]:
    """``0.5 * sum((z - sg(target))**2) / B``; its gradient with respect to ``z`` is ``(z - target) / B``."""
    return 0.5 * F.mse_loss(latents.float(), target.detach().float(), reduction="sum") / latents.shape[0]


def sds_loss(latents: Float[Tensor, "B *rest"], grad: Float[Tensor, "B *rest"]) -> Float[Tensor, ""]:
    """Score-distillation loss whose gradient with respect to the latents is ``grad / B``."""
    grad = torch.nan_to_num(grad.detach().float())
    return target_loss(latents, latents.detach().float() - grad)


def sds_weight(alphas_cumprod_t: Float[Tensor, "B"]) -> Float[Tensor, "B"]:
    """The 'sds' weighting ``w(t) = 1 - ᾱ_t``."""
    return 1.0 - alphas_cumprod_t


WEIGHTING_STRATEGIES = ("sds", "uniform", "fantasia3d")
"""Timestep weightings of the score-distillation gradient (threestudio's ``weighting_strategy``)."""


def timestep_weight(alphas_cumprod_t: Float[Tensor, "B"], strategy: str) -> Float[Tensor, "B"]:
    """``w(t)`` of a weighting strategy: ``sds`` ``1 - ᾱ_t``, ``uniform`` 1, ``fantasia3d`` ``sqrt(ᾱ_t)(1 - ᾱ_t)``
    (threestudio's three)."""
    if strategy == "sds":
        return sds_weight(alphas_cumprod_t)
    if strategy == "uniform":
        return torch.ones_like(alphas_cumprod_t)
    if strategy == "fantasia3d":
        return alphas_cumprod_t.sqrt() * (1.0 - alphas_cumprod_t)
    raise ValueError(f"weighting strategy {strategy!r} is not one of {WEIGHTING_STRATEGIES}")
