"""VideoCrafter2 (LVDM) re-implemented in our own code, loadable from the official ``model.ckpt``.

See ``extern/README.md`` for provenance. Public API:

* ``VideoCrafterUNetModel``, ``VIDEOCRAFTER2_UNET_CONFIGS``, ``unet_config_from_json`` — the 3D UNet (LDM parameter
  names): ``unet(x [B,4,T,h,w], t [B], context [B,77,1024], fps=16 | tensor [B]) -> eps [B,4,T,h,w]``.
* ``scale_arr`` — LVDM's per-timestep latent scale (1400 entries; 4D-fy ignores it).
* ``load_videocrafter2``, ``VideoCrafter2Models``, ``VideoCrafter2CheckpointError`` — checkpoint loading: the UNet,
  the VAE as diffusers ``AutoencoderKL`` and the OpenCLIP text tower (penultimate layer) as ``CLIPTextModel``.

The LDM pieces shared with MVDream (schedule, VAE and text-tower mappings, UNet blocks, checkpoint reading) live in
``extern.ldm``; this package never imports ``extern.mvdream``.
"""

from extern.videocrafter.checkpoint import (
    CONFIG_KEY,
    HUB_FILENAME,
    HUB_REPO_ID,
    VIDEOCRAFTER2_VAE_DDCONFIG,
    VideoCrafter2CheckpointError,
    VideoCrafter2Models,
    load_videocrafter2,
    reference_buffers,
    split_checkpoint,
)
from extern.videocrafter.schedule import scale_arr
from extern.videocrafter.unet import (
    DEFAULT_FPS,
    VIDEOCRAFTER2_UNET_CONFIGS,
    VideoCrafterUNetModel,
    unet_config_from_json,
)

__all__ = [
    "CONFIG_KEY",
    "DEFAULT_FPS",
    "HUB_FILENAME",
    "HUB_REPO_ID",
    "VIDEOCRAFTER2_UNET_CONFIGS",
    "VIDEOCRAFTER2_VAE_DDCONFIG",
    "VideoCrafter2CheckpointError",
    "VideoCrafter2Models",
    "VideoCrafterUNetModel",
    "load_videocrafter2",
    "reference_buffers",
    "scale_arr",
    "split_checkpoint",
    "unet_config_from_json",
]
