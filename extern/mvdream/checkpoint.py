"""Loading the official MVDream checkpoint (``MVDream/MVDream`` : ``sd-v2.1-base-4view.pt``) into our modules.

The file is a flat dict of fp32 tensors (guidance-models.md §1.3):

    model.diffusion_model.*     (690) -> extern.mvdream.unet.MultiViewUNetModel        (names unchanged)
    first_stage_model.*         (248) -> diffusers.AutoencoderKL                        (extern.ldm.vae mapping)
    cond_stage_model.model.*    (294) -> transformers.CLIPTextModel, 23 layers          (extern.ldm.text_encoder)
    betas, alphas_cumprod, ...  (12)  -> compared with extern.ldm.schedule, not loaded

Loading reads the file with ``torch.load(weights_only=True, mmap=True)`` (never ``weights_only=False``), builds every
module on the meta device and loads with ``strict=True, assign=True``, so the parameters are the (memory-mapped)
checkpoint tensors themselves: no random init, no second copy in RAM. Every failure raises
``MVDreamCheckpointError`` with the file and the offending keys named. The file handling shared with VideoCrafter2
lives in ``extern.ldm.checkpoint``; this module binds it to MVDream's file and error class.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from diffusers import AutoencoderKL
from jaxtyping import Float
from torch import Tensor
from transformers import CLIPTextConfig, CLIPTextModel

from extern.ldm import checkpoint as ldm_checkpoint
from extern.ldm.checkpoint import (
    COND_STAGE_PREFIX,
    SCHEDULE_TOLERANCE,
    TEXT_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    CheckpointParts,
    CheckpointSource,
    build_text_encoder,
    build_vae,
    finish_module,
    load_strict,
)
from extern.ldm.schedule import SCHEDULE_BUFFER_NAMES, schedule_buffers
from extern.ldm.text_encoder import sd2_text_encoder_config
from extern.ldm.vae import SD_VAE_DDCONFIG, SD_VAE_EMBED_DIM, SD_VAE_SCALING_FACTOR, diffusers_vae_config
from extern.mvdream.unet import MVDREAM_UNET_CONFIGS, MultiViewUNetModel

HUB_REPO_ID = "MVDream/MVDream"
HUB_FILENAME = "sd-v2.1-base-4view.pt"

__all__ = [
    "COND_STAGE_PREFIX", "HUB_FILENAME", "HUB_REPO_ID", "SCHEDULE_TOLERANCE", "TEXT_PREFIX", "UNET_PREFIX",
    "VAE_PREFIX", "CheckpointParts", "MVDreamCheckpointError", "MVDreamModels", "compare_schedule_buffers",
    "load_mvdream", "read_checkpoint", "resolve_checkpoint_path", "split_checkpoint", "unwrap_state_dict",
]


class MVDreamCheckpointError(Exception):
    """The MVDream checkpoint is absent, unreadable, or not the expected model.

    ``str(err)`` is a complete message; callers may catch and re-raise with the name of their config key, or pass
    ``config_key`` to ``load_mvdream`` to have it prefixed.

    Attributes:
        path: the file concerned, if known.
    """

    def __init__(self, message: str, path: Optional[Path] = None) -> None:
        super().__init__(message)
        self.path = path


SOURCE = CheckpointSource(model="MVDream", repo_id=HUB_REPO_ID, filename=HUB_FILENAME, size_text="5.22 GB",
                          error=MVDreamCheckpointError, article="an")


@dataclass
class MVDreamModels:
    """The frozen networks of one MVDream checkpoint (all in eval mode with ``requires_grad=False``).

    Attributes:
        unet: the multi-view eps-prediction UNet.
        vae: the KL-f8 autoencoder (diffusers); latents are scaled by ``vae.config.scaling_factor`` (0.18215).
        text_encoder: 23-layer CLIP text model whose ``last_hidden_state`` is MVDream's conditioning, or None
            when ``load_text_encoder=False``.
        alphas_cumprod: recomputed LDM ᾱ table [1000], float32, on the requested device.
        path: the checkpoint file.
    """

    unet: MultiViewUNetModel
    vae: AutoencoderKL
    text_encoder: Optional[CLIPTextModel]
    alphas_cumprod: Float[Tensor, "T"]
    path: Path


def resolve_checkpoint_path(path: Optional[Union[str, os.PathLike]] = None,
                            cache_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Return a local checkpoint file: ``path`` itself, or the hub file fetched with ``hf_hub_download``.

    Args:
        path: local file; when None, ``MVDream/MVDream:sd-v2.1-base-4view.pt`` is downloaded (or taken from the
            HF cache; ``HF_HUB_OFFLINE=1`` restricts this to the cache).
        cache_dir: optional HF cache directory for the download.

    Raises:
        MVDreamCheckpointError: the file does not exist, or the download/cache lookup failed.
    """
    return ldm_checkpoint.resolve_checkpoint_path(SOURCE, path, cache_dir)


def read_checkpoint(path: Path) -> dict[str, Tensor]:
    """Read a checkpoint file into a flat ``{name: tensor}`` dict without executing pickled code.

    See ``extern.ldm.checkpoint.read_checkpoint``. Raises ``MVDreamCheckpointError`` for a truncated/corrupt file,
    non-tensor pickles, or no tensor dict inside.
    """
    return ldm_checkpoint.read_checkpoint(SOURCE, path)


def unwrap_state_dict(obj: Any, path: Optional[Path] = None) -> dict[str, Tensor]:
    """Strip the usual containers (``{"state_dict": ...}``, ``{"module": ...}``, ``_forward_module.``) off a checkpoint.

    Raises:
        MVDreamCheckpointError: if what remains is not a dict of tensors.
    """
    return ldm_checkpoint.unwrap_state_dict(SOURCE, obj, path)


def split_checkpoint(state_dict: Mapping[str, Tensor], load_text_encoder: bool = True,
                     path: Optional[Path] = None) -> CheckpointParts:
    """Split an MVDream state dict into UNet, VAE, text-tower and schedule-buffer parts.

    Args:
        state_dict: flat checkpoint dict.
        load_text_encoder: if False, all ``cond_stage_model.*`` keys are ignored (and may be absent).
        path: for error messages.

    Raises:
        MVDreamCheckpointError: a required prefix is absent, or keys outside the known prefixes exist.
    """
    return ldm_checkpoint.split_checkpoint(SOURCE, state_dict, SCHEDULE_BUFFER_NAMES, load_text_encoder, path)


def compare_schedule_buffers(stored: Mapping[str, Tensor]) -> dict[str, float]:
    """Compare stored LDM schedule buffers with the recomputed tables; warn where they deviate.

    Deviation is ``max |stored - ours| / max(|ours|, 1)``; above ``SCHEDULE_TOLERANCE`` a ``UserWarning`` names the
    buffer. The stored buffers are never used (our tables are recomputed), so this only flags a checkpoint trained
    with a different schedule.

    Returns:
        the deviation per stored buffer name.
    """
    return ldm_checkpoint.compare_schedule_buffers(SOURCE, stored, schedule_buffers())


def load_mvdream(
    path: Optional[Union[str, os.PathLike]] = None,
    *,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[torch.dtype] = None,
    load_text_encoder: bool = True,
    unet_config: Optional[Mapping[str, Any]] = None,
    vae_ddconfig: Optional[Mapping[str, Any]] = None,
    text_config: Optional[CLIPTextConfig] = None,
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    config_key: Optional[str] = None,
) -> MVDreamModels:
    """Load UNet, VAE and (optionally) text encoder of an MVDream checkpoint, each with ``strict=True``.

    Args:
        path: local checkpoint (``.pt``/``.ckpt``/``.safetensors``); None downloads ``MVDream/MVDream`` :
            ``sd-v2.1-base-4view.pt`` via ``hf_hub_download`` (cache only when ``HF_HUB_OFFLINE=1``).
        device: target device (default: stay on CPU, memory-mapped).
        dtype: target floating dtype (default: the file's, fp32).
        load_text_encoder: also build the 23-layer CLIP text model from ``cond_stage_model.model.*``.
        unet_config: ``MultiViewUNetModel`` kwargs (default: ``MVDREAM_UNET_CONFIGS["sd-v2.1-base-4view"]``).
        vae_ddconfig: LDM VAE ddconfig (default: the SD KL-f8 VAE).
        text_config: text encoder config (default: ``sd2_text_encoder_config()``).
        cache_dir: HF cache directory for the download.
        config_key: name of the caller's config option holding ``path``; prefixed to error messages.

    Returns:
        ``MVDreamModels`` with frozen, eval-mode modules and the recomputed ᾱ table.

    Raises:
        MVDreamCheckpointError: missing file, unreadable file, or a checkpoint of another model (keys listed).
    """
    target = torch.device(device) if device is not None else None
    try:
        file = resolve_checkpoint_path(path, cache_dir)
        parts = split_checkpoint(read_checkpoint(file), load_text_encoder, file)
        compare_schedule_buffers(parts.schedule)

        with torch.device("meta"):
            unet = MultiViewUNetModel(**dict(unet_config or MVDREAM_UNET_CONFIGS["sd-v2.1-base-4view"]))
        load_strict(SOURCE, unet, parts.unet, f"UNet ({UNET_PREFIX}*)", file)
        finish_module(unet, "UNet", target, dtype)

        vae_config = diffusers_vae_config(vae_ddconfig or SD_VAE_DDCONFIG, SD_VAE_EMBED_DIM, SD_VAE_SCALING_FACTOR)
        vae = build_vae(SOURCE, parts.vae, vae_config, file, target, dtype)
        text_encoder = None
        if load_text_encoder:
            config = text_config or sd2_text_encoder_config()
            text_encoder = build_text_encoder(SOURCE, parts.text, config, file, target, dtype)
    except MVDreamCheckpointError as err:
        if config_key is None:
            raise
        raise MVDreamCheckpointError(f"{config_key}: {err}", err.path) from err

    alphas_cumprod = schedule_buffers()["alphas_cumprod"].to(target or torch.device("cpu"))
    return MVDreamModels(unet=unet, vae=vae, text_encoder=text_encoder, alphas_cumprod=alphas_cumprod, path=file)
