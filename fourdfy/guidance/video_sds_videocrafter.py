"""Video score-distillation math of ``videocrafter-guidance``, as pure functions: motion amplification about the
frame mean (4D-fy's addition for VideoCrafter2), the optional LVDM ``scale_arr`` noising, and the composed latent
gradient of one call. What every video guidance shares (frame layout, per-frame encoding with ``low_ram_vae``) is
in :mod:`fourdfy.guidance.video_sds`; the timestep weightings in :mod:`fourdfy.guidance.sds`.

Notation as in :mod:`fourdfy.guidance.sds`: ``z`` latents ``[B, C, T, h, w]`` (B clips of T frames), ``t`` integer
timesteps ``[B]``, ``a_t = ᾱ_t``, ``eps`` the added noise. The frame axis of latents and scores is dim 2.
"""

from typing import Optional

from jaxtyping import Float
from torch import Tensor

from fourdfy.guidance import sds

FRAME_DIM = 2
"""The frame axis of ``[B, C, T, h, w]`` latents (LVDM's layout)."""

def motion_amplify(score: Float[Tensor, "B C T h w"], scale: float) -> Float[Tensor, "B C T h w"]:
    """4D-fy's motion amplification: ``mean_T(score) + scale * (score - mean_T(score))``.

    The part of the score shared by all frames (its mean over the frame axis) is kept; each frame's deviation from
    it is multiplied by ``scale`` (30 in 4D-fy's ``_vc`` configs), so the gradient pushes harder on what differs
    between frames. ``scale = 1`` is the identity.
    """
    mean = score.mean(dim=FRAME_DIM, keepdim=True)
    return mean + scale * (score - mean)


def latent_scale(scale_arr: Float[Tensor, "S"], t: Tensor) -> Float[Tensor, "B"]:
    """LVDM's per-timestep latent scale ``scale_arr[t]`` (``extern.videocrafter.scale_arr``: 1 at t = 0, falling
    linearly to 0.7 at t = 399, then 0.7)."""
    return scale_arr.to(device=t.device)[t]


def videocrafter_q_sample(
    z: Float[Tensor, "B C T h w"],
    alphas_cumprod_t: Float[Tensor, "B"],
    noise: Float[Tensor, "B C T h w"],
    scale_t: Optional[Float[Tensor, "B"]] = None,
) -> Float[Tensor, "B C T h w"]:
    """Noisy latents ``z_t``.

    Without ``scale_t`` (4D-fy): ``sqrt(ᾱ_t) z + sqrt(1 - ᾱ_t) eps``. With ``scale_t`` (how VideoCrafter2 was
    trained, LVDM ``use_scale``): ``sqrt(ᾱ_t) scale_t z + sqrt(1 - ᾱ_t) eps``.
    """
    if scale_t is not None:
        z = z * scale_t.reshape(-1, *([1] * (z.dim() - 1))).to(z.dtype)
    return sds.q_sample(z, alphas_cumprod_t, noise)


def videocrafter_sds_gradient(
    eps_cond: Float[Tensor, "B C T h w"],
    eps_uncond: Float[Tensor, "B C T h w"],
    noise: Float[Tensor, "B C T h w"],
    alphas_cumprod_t: Float[Tensor, "B"],
    guidance_scale: float,
    motion_amp_scale: float,
    weighting_strategy: str = "sds",
) -> Float[Tensor, "B C T h w"]:
    """The latent gradient of one VideoCrafter2 SDS call (4D-fy §9.4 steps 6-8).

    1. ``eps_hat = eps_c + s (eps_c - eps_u)`` (:func:`fourdfy.guidance.sds.cfg_cond_anchor`);
    2. ``score = eps_hat - eps``;
    3. ``score = mean_T(score) + m (score - mean_T(score))`` (:func:`motion_amplify`);
    4. ``g = w(t) score``, ``w`` from :func:`fourdfy.guidance.sds.timestep_weight` (``1 - ᾱ_t`` for ``"sds"``).
    """
    eps_hat = sds.cfg_cond_anchor(eps_cond, eps_uncond, guidance_scale)
    score = motion_amplify(eps_hat - noise, motion_amp_scale)
    w = sds.timestep_weight(alphas_cumprod_t, weighting_strategy)
    return w.reshape(-1, *([1] * (score.dim() - 1))).to(score.dtype) * score
