"""VideoCrafter2's ``scale_arr``: the per-timestep latent scale its LVDM ``LatentDiffusion`` trained with.

With ``use_scale: true`` (VideoCrafter2's config: ``scale_a`` 1, ``scale_b`` 0.7, ``mid_step`` 400,
``fix_scale_bug`` False) LVDM noises as ``q(x_t | x_0) = N(sqrt(ᾱ_t) · scale_arr[t] · x_0, (1 - ᾱ_t) I)`` with

    scale_arr = concat(linspace(scale_a, scale_b, mid_step), full(N, scale_b))

where N is ``num_timesteps - mid_step`` with the bug fixed and ``num_timesteps`` without it, so the official buffer
has 1400 entries (the last 400 are never indexed). As in LVDM the table is built in float64 and stored as float32.
4D-fy ignores it (plain ᾱ noising); the guidance exposes it behind a switch.
"""

import torch
from jaxtyping import Float
from torch import Tensor

SCALE_A = 1.0
SCALE_B = 0.7
MID_STEP = 400
NUM_TIMESTEPS = 1000


def scale_arr(scale_a: float = SCALE_A, scale_b: float = SCALE_B, mid_step: int = MID_STEP,
              num_timesteps: int = NUM_TIMESTEPS, fix_scale_bug: bool = False) -> Float[Tensor, "n"]:
    """LVDM's ``scale_arr`` buffer (float32; 1400 entries for VideoCrafter2's settings).

    Args:
        scale_a: scale at t = 0.
        scale_b: scale from ``mid_step`` on.
        mid_step: length of the linear ramp from ``scale_a`` to ``scale_b`` (both ends included).
        num_timesteps: diffusion steps T.
        fix_scale_bug: if True the table has T entries, else T + mid_step (VideoCrafter2's checkpoint).
    """
    tail = num_timesteps - mid_step if fix_scale_bug else num_timesteps
    ramp = torch.linspace(scale_a, scale_b, mid_step, dtype=torch.float64)
    return torch.cat([ramp, torch.full((tail,), scale_b, dtype=torch.float64)]).to(torch.float32)
