"""LDM noise schedule shared by MVDream, SD 2.x and VideoCrafter: "linear" betas and the ᾱ tables.

Forward noising and x0 recovery live with the SDS math in ``fourdfy/guidance/sds.py``.

LDM's "linear" schedule is linear in sqrt(beta) (diffusers calls it "scaled_linear"):

    beta_i = (sqrt(beta_start) + i / (T - 1) * (sqrt(beta_end) - sqrt(beta_start)))^2,   i = 0..T-1
    alpha_i = 1 - beta_i,   ᾱ_t = prod_{i<=t} alpha_i

As in LDM (``make_beta_schedule`` + ``register_schedule``), every table is computed in float64 and only then cast
to float32; diffusers computes the linspace in float32, which differs by ~1e-7.
"""

from jaxtyping import Float
from torch import Tensor
import torch

LINEAR_START = 0.00085
LINEAR_END = 0.012
NUM_TIMESTEPS = 1000

# Names of the buffers LDM's LatentDiffusion / MVDream's LatentDiffusionInterface register (and save).
SCHEDULE_BUFFER_NAMES = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


def _betas_float64(linear_start: float, linear_end: float, num_timesteps: int) -> Tensor:
    return torch.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=torch.float64) ** 2


def linear_betas(linear_start: float = LINEAR_START, linear_end: float = LINEAR_END,
                 num_timesteps: int = NUM_TIMESTEPS) -> Float[Tensor, "T"]:
    """LDM "linear" betas: ``linspace(sqrt(start), sqrt(end), T)**2`` in float64, returned as float32.

    Args:
        linear_start: beta_0.
        linear_end: beta_{T-1}.
        num_timesteps: T.

    Returns:
        float32 betas [T].
    """
    return _betas_float64(linear_start, linear_end, num_timesteps).to(torch.float32)


def alphas_cumprod(linear_start: float = LINEAR_START, linear_end: float = LINEAR_END,
                   num_timesteps: int = NUM_TIMESTEPS) -> Float[Tensor, "T"]:
    """ᾱ_t = prod_{i<=t} (1 - beta_i), accumulated in float64 from the float64 betas, returned as float32.

    Args:
        linear_start: beta_0.
        linear_end: beta_{T-1}.
        num_timesteps: T.

    Returns:
        float32 ᾱ [T], decreasing from ~0.99915 to ~0.0047 for the default schedule.
    """
    betas = _betas_float64(linear_start, linear_end, num_timesteps)
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


def schedule_buffers(linear_start: float = LINEAR_START, linear_end: float = LINEAR_END,
                     num_timesteps: int = NUM_TIMESTEPS) -> dict[str, Float[Tensor, "T"]]:
    """All twelve schedule buffers of an LDM checkpoint, recomputed (float64 maths, float32 result).

    With ᾱ_prev = [1, ᾱ_0, ..., ᾱ_{T-2}] and beta, alpha as in the module docstring:

    * sqrt_alphas_cumprod = sqrt(ᾱ), sqrt_one_minus_alphas_cumprod = sqrt(1-ᾱ),
      log_one_minus_alphas_cumprod = log(1-ᾱ)
    * sqrt_recip_alphas_cumprod = sqrt(1/ᾱ), sqrt_recipm1_alphas_cumprod = sqrt(1/ᾱ - 1)
    * posterior_variance = beta (1-ᾱ_prev)/(1-ᾱ),
      posterior_log_variance_clipped = log(max(posterior_variance, 1e-20))
    * posterior_mean_coef1 = beta sqrt(ᾱ_prev)/(1-ᾱ), posterior_mean_coef2 = (1-ᾱ_prev) sqrt(alpha)/(1-ᾱ)

    Args:
        linear_start: beta_0.
        linear_end: beta_{T-1}.
        num_timesteps: T.

    Returns:
        dict keyed by the names in ``SCHEDULE_BUFFER_NAMES``, each float32 [T].
    """
    betas = _betas_float64(linear_start, linear_end, num_timesteps)
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, dim=0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
    tables = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": ac.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - ac).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / ac).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / ac - 1.0).sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * ac_prev.sqrt() / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
    }
    return {name: tables[name].to(torch.float32) for name in SCHEDULE_BUFFER_NAMES}
