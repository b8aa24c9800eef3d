"""Video score-distillation math of ``videocrafter-guidance``, as pure functions.

Two sections:

* **VideoCrafter2 only** -- motion amplification about the frame mean (4D-fy's addition for VideoCrafter2), the
  optional LVDM ``scale_arr`` noising, and the composed latent gradient of one call.
* **Generic: to be shared with zeroscope-guidance** -- frame resizing, the choice of the ``low_ram_vae`` frames that
  carry gradients, per-frame VAE encoding and the timestep weightings. ``zeroscope-guidance`` needs the same pieces
  (it is being written in parallel with its own ``fourdfy/guidance/video_sds.py``); the two are to be merged there.

Notation as in :mod:`fourdfy.guidance.sds`: ``z`` latents ``[B, C, T, h, w]`` (B clips of T frames), ``t`` integer
timesteps ``[B]``, ``a_t = ᾱ_t``, ``eps`` the added noise. The frame axis of latents and scores is dim 2.
"""

from collections.abc import Callable, Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from fourdfy.guidance import sds

FRAME_DIM = 2
"""The frame axis of ``[B, C, T, h, w]`` latents (LVDM's layout)."""

# ======================================================================================================================
# VideoCrafter2 only
# ======================================================================================================================


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
    4. ``g = w(t) score``, ``w`` from :func:`timestep_weight` (``1 - ᾱ_t`` for ``"sds"``).
    """
    eps_hat = sds.cfg_cond_anchor(eps_cond, eps_uncond, guidance_scale)
    score = motion_amplify(eps_hat - noise, motion_amp_scale)
    w = timestep_weight(alphas_cumprod_t, weighting_strategy)
    return w.reshape(-1, *([1] * (score.dim() - 1))).to(score.dtype) * score


# ======================================================================================================================
# Generic: to be shared with zeroscope-guidance
# ======================================================================================================================

WEIGHTING_STRATEGIES = ("sds", "uniform", "fantasia3d")
"""Timestep weightings of threestudio's video guidances (4D-fy's configs use ``sds``)."""


def timestep_weight(alphas_cumprod_t: Float[Tensor, "B"], strategy: str) -> Float[Tensor, "B"]:
    """Weight of the score per timestep: ``sds`` ``1 - ᾱ_t``; ``uniform`` 1; ``fantasia3d`` ``sqrt(ᾱ_t)(1 - ᾱ_t)``."""
    if strategy == "sds":
        return sds.sds_weight(alphas_cumprod_t)
    if strategy == "uniform":
        return torch.ones_like(alphas_cumprod_t)
    if strategy == "fantasia3d":
        return alphas_cumprod_t.sqrt() * (1.0 - alphas_cumprod_t)
    raise ValueError(f"weighting_strategy: {strategy!r} is not one of {WEIGHTING_STRATEGIES}")


def frames_to_video(rgb: Float[Tensor, "B T H W 3"], size: tuple[int, int]) -> Float[Tensor, "B 3 T h w"]:
    """Clips of renders ``[B, T, H, W, 3]`` as channel-first videos ``[B, 3, T, h, w]``, each frame bilinearly
    resized to ``size = (h, w)`` (``align_corners=False``; no copy when the size already matches). Values unchanged."""
    b, t, height, width, _ = rgb.shape
    frames = rgb.reshape(b * t, height, width, 3).permute(0, 3, 1, 2)
    if (height, width) != tuple(size):
        frames = F.interpolate(frames, size=tuple(size), mode="bilinear", align_corners=False)
    return frames.reshape(b, t, 3, *frames.shape[-2:]).transpose(1, 2)


def select_grad_frames(
    num_frames: int, low_ram_vae: int, generator: Optional[torch.Generator] = None
) -> list[int]:
    """Frames whose VAE encoding carries gradients (sorted): all of them when ``low_ram_vae <= 0`` or
    ``>= num_frames``, else ``low_ram_vae`` frames drawn uniformly without replacement (4D-fy's ``low_ram_vae``)."""
    if low_ram_vae <= 0 or low_ram_vae >= num_frames:
        return list(range(num_frames))
    device = generator.device if generator is not None else torch.device("cpu")
    perm = torch.randperm(num_frames, generator=generator, device=device)
    return sorted(perm[:low_ram_vae].tolist())


def encode_video_frames(
    encode: Callable[[Tensor], Tensor], video: Float[Tensor, "B 3 T H W"], grad_frames: Sequence[int]
) -> Float[Tensor, "B C T h w"]:
    """Per-frame latents of videos: ``encode`` (images ``[N, 3, H, W]`` -> latents ``[N, C, h, w]``) runs once on
    the frames listed in ``grad_frames`` (with autograd) and once, under ``no_grad``, on the others, whose latents
    are therefore constants. Frame order is kept."""
    b, _, t, height, width = video.shape
    frames = video.transpose(1, 2)  # [B, T, 3, H, W]
    with_grad = sorted(set(int(i) for i in grad_frames))
    if any(i < 0 or i >= t for i in with_grad):
        raise ValueError(f"grad_frames {with_grad} are not all frames of a {t}-frame video")
    without = [i for i in range(t) if i not in with_grad]
    parts, order = [], []
    if with_grad:
        lat = encode(frames[:, with_grad].reshape(b * len(with_grad), 3, height, width))
        parts.append(lat.reshape(b, len(with_grad), *lat.shape[1:]))
        order += with_grad
    if without:
        x = frames[:, without].detach().reshape(b * len(without), 3, height, width)
        with torch.no_grad():
            lat = encode(x)
        parts.append(lat.reshape(b, len(without), *lat.shape[1:]))
        order += without
    latents = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    if order != list(range(t)):
        latents = latents[:, torch.argsort(torch.tensor(order)).to(latents.device)]
    return latents.transpose(1, 2)
