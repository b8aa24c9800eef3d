"""Loading the official VideoCrafter2 checkpoint (``VideoCrafter/VideoCrafter2`` : ``model.ckpt``) into our modules.

``model.ckpt`` (7.4 GB, fp32) is a Lightning checkpoint: the state dict sits under ``"state_dict"``
(guidance-models.md §2.3; a DeepSpeed ``module`` wrapper is unwrapped too). Its 2039 entries split as

    model.diffusion_model.*     (1484) -> extern.videocrafter.unet.VideoCrafterUNetModel   (names unchanged)
    first_stage_model.*         (248)  -> diffusers.AutoencoderKL                           (extern.ldm.vae mapping)
    cond_stage_model.model.*    (294)  -> transformers.CLIPTextModel, 23 layers             (extern.ldm.text_encoder)
    betas, alphas_cumprod, ...  (12)   -> compared with extern.ldm.schedule, not loaded
    scale_arr                   (1)    -> compared with extern.videocrafter.schedule.scale_arr, not loaded

The text tower is VideoCrafter2's own ``FrozenOpenCLIPEmbedder(layer="penultimate")``: token + positional
embedding, resblocks 0..22, ``ln_final`` (the same function as MVDream's, so the same 23-layer ``CLIPTextModel``).

The file is read with ``torch.load(weights_only=True, mmap=True)``, every module is built on the meta device and
loaded with ``strict=True, assign=True`` (``extern.ldm.checkpoint``). Every failure raises
``VideoCrafter2CheckpointError`` naming the file, where to get it, the config key that takes a local path, and the
offending keys.
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
    UNET_PREFIX,
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
from extern.videocrafter.schedule import scale_arr
from extern.videocrafter.unet import VIDEOCRAFTER2_UNET_CONFIGS, VideoCrafterUNetModel

HUB_REPO_ID = "VideoCrafter/VideoCrafter2"
HUB_FILENAME = "model.ckpt"
# The 4D-fy config option whose value is this loader's `path` (4D-fy treats the hub id or "" as "download").
CONFIG_KEY = "system.guidance_video.pretrained_model_name_or_path"
# Unprefixed buffers of VideoCrafter2's LatentDiffusion: the LDM schedule plus scale_arr.
BUFFER_NAMES = (*SCHEDULE_BUFFER_NAMES, "scale_arr")
# first_stage_config.params.ddconfig of inference_t2v_512_v2.0.yaml: the SD KL-f8 VAE at resolution 512.
VIDEOCRAFTER2_VAE_DDCONFIG: dict[str, Any] = {**SD_VAE_DDCONFIG, "resolution": 512}


class VideoCrafter2CheckpointError(Exception):
    """The VideoCrafter2 checkpoint is absent, unreadable, or not the expected model.

    Attributes:
        path: the file concerned, if known.
    """

    def __init__(self, message: str, path: Optional[Path] = None) -> None:
        super().__init__(message)
        self.path = path


SOURCE = CheckpointSource(model="VideoCrafter2", repo_id=HUB_REPO_ID, filename=HUB_FILENAME, size_text="7.4 GB",
                          error=VideoCrafter2CheckpointError, path_option=CONFIG_KEY)


@dataclass
class VideoCrafter2Models:
    """The frozen networks of one VideoCrafter2 checkpoint (eval mode, ``requires_grad=False``).

    Attributes:
        unet: the text-to-video eps-prediction 3D UNet.
        vae: the per-frame KL-f8 autoencoder (diffusers); latents are scaled by 0.18215.
        text_encoder: 23-layer CLIP text model whose ``last_hidden_state`` is VideoCrafter2's conditioning
            (OpenCLIP penultimate layer + ``ln_final``), or None when ``load_text_encoder=False``.
        alphas_cumprod: recomputed LDM ᾱ table [1000], float32.
        scale_arr: recomputed LVDM latent scale [1400], float32 (4D-fy does not use it).
        path: the checkpoint file.
    """

    unet: VideoCrafterUNetModel
    vae: AutoencoderKL
    text_encoder: Optional[CLIPTextModel]
    alphas_cumprod: Float[Tensor, "T"]
    scale_arr: Float[Tensor, "S"]
    path: Path


def reference_buffers() -> dict[str, Tensor]:
    """The 13 unprefixed buffers of the official checkpoint, recomputed (LDM schedule + ``scale_arr``)."""
    return {**schedule_buffers(), "scale_arr": scale_arr()}


def split_checkpoint(state_dict: Mapping[str, Tensor], load_text_encoder: bool = True,
                     path: Optional[Path] = None) -> CheckpointParts:
    """Split a VideoCrafter2 state dict into UNet, VAE, text-tower and buffer parts (prefixes stripped).

    Raises:
        VideoCrafter2CheckpointError: a required prefix is absent, or keys outside the known layout exist.
    """
    return ldm_checkpoint.split_checkpoint(SOURCE, state_dict, BUFFER_NAMES, load_text_encoder, path)


def load_videocrafter2(
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
) -> VideoCrafter2Models:
    """Load UNet, VAE and (optionally) text encoder of a VideoCrafter2 checkpoint, each with ``strict=True``.

    Args:
        path: local checkpoint (``.ckpt``/``.pt``/``.safetensors``). None, ``""`` or the hub id
            ``"VideoCrafter/VideoCrafter2"`` (4D-fy's convention) download ``model.ckpt`` via ``hf_hub_download``
            (cache only when ``HF_HUB_OFFLINE=1``).
        device: target device (default: stay on CPU, memory-mapped).
        dtype: target floating dtype (default: the file's, fp32).
        load_text_encoder: also build the 23-layer CLIP text model from ``cond_stage_model.model.*``.
        unet_config: ``VideoCrafterUNetModel`` kwargs (default: ``VIDEOCRAFTER2_UNET_CONFIGS["t2v_512_v2"]``).
        vae_ddconfig: LDM VAE ddconfig (default: ``VIDEOCRAFTER2_VAE_DDCONFIG``).
        text_config: text encoder config (default: ``sd2_text_encoder_config()``).
        cache_dir: HF cache directory for the download.
        config_key: name of the caller's config option holding ``path``; prefixed to error messages.

    Returns:
        ``VideoCrafter2Models`` with frozen, eval-mode modules and the recomputed ᾱ and ``scale_arr`` tables.

    Raises:
        VideoCrafter2CheckpointError: missing file, unreadable file, or a checkpoint of another model (keys listed).
    """
    target = torch.device(device) if device is not None else None
    if path is not None and str(path) in ("", HUB_REPO_ID):
        path = None
    try:
        file = ldm_checkpoint.resolve_checkpoint_path(SOURCE, path, cache_dir)
        parts = split_checkpoint(ldm_checkpoint.read_checkpoint(SOURCE, file), load_text_encoder, file)
        ldm_checkpoint.compare_schedule_buffers(SOURCE, parts.schedule, reference_buffers())

        with torch.device("meta"):
            unet = VideoCrafterUNetModel(**dict(unet_config or VIDEOCRAFTER2_UNET_CONFIGS["t2v_512_v2"]))
        load_strict(SOURCE, unet, parts.unet, f"UNet ({UNET_PREFIX}*)", file)
        finish_module(unet, "UNet", target, dtype)

        vae_config = diffusers_vae_config(vae_ddconfig or VIDEOCRAFTER2_VAE_DDCONFIG, SD_VAE_EMBED_DIM,
                                          SD_VAE_SCALING_FACTOR)
        vae = build_vae(SOURCE, parts.vae, vae_config, file, target, dtype)
        text_encoder = None
        if load_text_encoder:
            text_encoder = build_text_encoder(SOURCE, parts.text, text_config or sd2_text_encoder_config(), file,
                                              target, dtype)
    except VideoCrafter2CheckpointError as err:
        if config_key is None:
            raise
        raise VideoCrafter2CheckpointError(f"{config_key}: {err}", err.path) from err

    where = target or torch.device("cpu")
    return VideoCrafter2Models(unet=unet, vae=vae, text_encoder=text_encoder,
                               alphas_cumprod=schedule_buffers()["alphas_cumprod"].to(where),
                               scale_arr=scale_arr().to(where), path=file)
