"""What every LDM-family network shares (MVDream, SD 2.x, VideoCrafter2), written in our own code.

* ``linear_betas``, ``alphas_cumprod``, ``schedule_buffers`` — the LDM "linear" noise schedule (float64 tables).
* ``diffusers_vae_config``, ``convert_ldm_vae_state_dict`` — LDM KL-f8 VAE -> diffusers ``AutoencoderKL`` names.
* ``sd2_text_encoder_config``, ``convert_open_clip_text_state_dict`` — OpenCLIP ViT-H-14 text tower ->
  transformers ``CLIPTextModel``.
* ``check_state_dict``, ``StateDictMismatchError`` — name/shape comparison with every mismatch listed.
* ``extern.ldm.checkpoint`` — safe reading of LDM checkpoint files (weights only, memory-mapped, wrappers
  stripped), prefix split, schedule-buffer comparison, strict meta-device loads of the VAE and text tower; each
  model binds it to its own file and error class with a ``CheckpointSource``.
* ``extern.ldm.unet_blocks`` — the generic LDM UNet blocks (``timestep_embedding``, ``GroupNorm32``, ``ResBlock``,
  ``Downsample``, ``Upsample``, ``Attention``, ``FeedForward``, ``BasicTransformerBlock``) with the original
  parameter names.

Network-specific code (UNets, checkpoint layouts) lives in ``extern/mvdream`` and ``extern/videocrafter``, which
import from here and never from each other.
"""

from extern.ldm.schedule import SCHEDULE_BUFFER_NAMES, alphas_cumprod, linear_betas, schedule_buffers
from extern.ldm.state_dict_check import StateDictMismatchError, check_state_dict, remaining_meta_tensors
from extern.ldm.text_encoder import (
    convert_open_clip_text_state_dict,
    rename_open_clip_text_state_dict,
    reset_position_ids,
    sd2_text_encoder_config,
)
from extern.ldm.vae import (
    SD_VAE_DDCONFIG,
    SD_VAE_SCALING_FACTOR,
    convert_ldm_vae_state_dict,
    diffusers_vae_config,
    rename_ldm_vae_state_dict,
)

__all__ = [
    "SCHEDULE_BUFFER_NAMES",
    "SD_VAE_DDCONFIG",
    "SD_VAE_SCALING_FACTOR",
    "StateDictMismatchError",
    "alphas_cumprod",
    "check_state_dict",
    "convert_ldm_vae_state_dict",
    "convert_open_clip_text_state_dict",
    "diffusers_vae_config",
    "linear_betas",
    "remaining_meta_tensors",
    "rename_ldm_vae_state_dict",
    "rename_open_clip_text_state_dict",
    "reset_position_ids",
    "schedule_buffers",
    "sd2_text_encoder_config",
]
