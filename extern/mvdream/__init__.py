"""MVDream networks re-implemented in our own code, loadable from the official ``sd-v2.1-base-4view.pt``.

See ``extern/README.md`` for provenance. Public API:

* ``MultiViewUNetModel``, ``MVDREAM_UNET_CONFIGS`` — the multi-view UNet (LDM parameter names).
* ``c2w_to_mvdream_camera`` — threestudio c2w -> 16-value camera input.
* the LDM pieces MVDream shares with SD 2.x and VideoCrafter (schedule, VAE and text-tower mappings, state-dict
  checks) live in ``extern.ldm`` and are re-exported here for convenience.
* ``load_mvdream``, ``MVDreamModels``, ``MVDreamCheckpointError`` — checkpoint loading.
"""

from extern.mvdream.camera import c2w_to_mvdream_camera
from extern.mvdream.checkpoint import (
    HUB_FILENAME,
    HUB_REPO_ID,
    MVDreamCheckpointError,
    MVDreamModels,
    load_mvdream,
    read_checkpoint,
    resolve_checkpoint_path,
    split_checkpoint,
)
from extern.ldm.schedule import alphas_cumprod, linear_betas, schedule_buffers
from extern.ldm.state_dict_check import StateDictMismatchError, check_state_dict
from extern.ldm.text_encoder import (
    convert_open_clip_text_state_dict,
    rename_open_clip_text_state_dict,
    sd2_text_encoder_config,
)
from extern.mvdream.unet import MVDREAM_UNET_CONFIGS, MultiViewUNetModel, timestep_embedding
from extern.ldm.vae import (
    SD_VAE_DDCONFIG,
    SD_VAE_SCALING_FACTOR,
    convert_ldm_vae_state_dict,
    diffusers_vae_config,
    rename_ldm_vae_state_dict,
)

__all__ = [
    "HUB_FILENAME",
    "HUB_REPO_ID",
    "MVDREAM_UNET_CONFIGS",
    "MVDreamCheckpointError",
    "MVDreamModels",
    "MultiViewUNetModel",
    "SD_VAE_DDCONFIG",
    "SD_VAE_SCALING_FACTOR",
    "StateDictMismatchError",
    "alphas_cumprod",
    "c2w_to_mvdream_camera",
    "check_state_dict",
    "convert_ldm_vae_state_dict",
    "convert_open_clip_text_state_dict",
    "diffusers_vae_config",
    "linear_betas",
    "load_mvdream",
    "read_checkpoint",
    "rename_ldm_vae_state_dict",
    "rename_open_clip_text_state_dict",
    "resolve_checkpoint_path",
    "schedule_buffers",
    "sd2_text_encoder_config",
    "split_checkpoint",
    "timestep_embedding",
]
