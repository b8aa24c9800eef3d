"""LDM KL-VAE (``first_stage_model.*``) -> diffusers ``AutoencoderKL``: config and parameter-name mapping.

The LDM autoencoder of MVDream (and SD 2.x, VideoCrafter) is the same network as diffusers' ``AutoencoderKL``
with ``DownEncoderBlock2D`` / ``UpDecoderBlock2D`` blocks; only names (and the 1x1-conv attention weights) differ:

    LDM (prefix stripped)                          diffusers
    encoder.down.{i}.block.{j}.*                -> encoder.down_blocks.{i}.resnets.{j}.*
    encoder.down.{i}.downsample.conv.*          -> encoder.down_blocks.{i}.downsamplers.0.conv.*
    decoder.up.{i}.block.{j}.*                  -> decoder.up_blocks.{n-1-i}.resnets.{j}.*   (order reversed)
    decoder.up.{i}.upsample.conv.*              -> decoder.up_blocks.{n-1-i}.upsamplers.0.conv.*
    {enc,dec}.mid.block_1.* / mid.block_2.*     -> {enc,dec}.mid_block.resnets.0.* / .1.*
    {enc,dec}.mid.attn_1.norm.*                 -> {enc,dec}.mid_block.attentions.0.group_norm.*
    {enc,dec}.mid.attn_1.{q,k,v}.*              -> {enc,dec}.mid_block.attentions.0.to_{q,k,v}.*  ([C,C,1,1] -> [C,C])
    {enc,dec}.mid.attn_1.proj_out.*             -> {enc,dec}.mid_block.attentions.0.to_out.0.*     ([C,C,1,1] -> [C,C])
    {enc,dec}.norm_out.*                        -> {enc,dec}.conv_norm_out.*
    *.nin_shortcut.*                            -> *.conv_shortcut.*
    {enc,dec}.conv_in/conv_out, quant_conv, post_quant_conv, norm1/conv1/norm2/conv2: unchanged

The mapping is a pure function of names and tensors (only reshapes, so it works on meta tensors). It raises on
names it does not recognise, and ``convert_ldm_vae_state_dict`` also checks the result against a meta-built diffusers
model so missing keys and shape mismatches are reported by name.
"""

import re
from collections.abc import Mapping
from typing import Any

import torch
from diffusers import AutoencoderKL
from torch import Tensor

from extern.ldm.state_dict_check import check_state_dict

# ddconfig of the SD / MVDream KL-f8 VAE (mvdream/configs/sd-v2-base.yaml, first_stage_config.params.ddconfig).
SD_VAE_DDCONFIG: dict[str, Any] = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}
SD_VAE_EMBED_DIM = 4
SD_VAE_SCALING_FACTOR = 0.18215

_RESNET_PARTS = {
    "norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut",
}
_ATTN_PARTS = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_UNCHANGED = re.compile(r"^(?:(?:encoder|decoder)\.(?:conv_in|conv_out)|quant_conv|post_quant_conv)\.(?:weight|bias)$")
_NORM_OUT = re.compile(r"^(encoder|decoder)\.norm_out\.(weight|bias)$")
_DOWN_BLOCK = re.compile(r"^encoder\.down\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)$")
_DOWN_SAMPLE = re.compile(r"^encoder\.down\.(\d+)\.downsample\.conv\.(weight|bias)$")
_UP_BLOCK = re.compile(r"^decoder\.up\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)$")
_UP_SAMPLE = re.compile(r"^decoder\.up\.(\d+)\.upsample\.conv\.(weight|bias)$")
_MID_BLOCK = re.compile(r"^(encoder|decoder)\.mid\.block_([12])\.(\w+)\.(weight|bias)$")
_MID_ATTN = re.compile(r"^(encoder|decoder)\.mid\.attn_1\.(\w+)\.(weight|bias)$")


def diffusers_vae_config(ddconfig: Mapping[str, Any] = SD_VAE_DDCONFIG, embed_dim: int = SD_VAE_EMBED_DIM,
                         scaling_factor: float = SD_VAE_SCALING_FACTOR) -> dict[str, Any]:
    """diffusers ``AutoencoderKL`` constructor kwargs equivalent to an LDM ``AutoencoderKL(ddconfig, embed_dim)``.

    Args:
        ddconfig: LDM ddconfig (double_z, z_channels, resolution, in_channels, out_ch, ch, ch_mult,
            num_res_blocks, attn_resolutions, dropout).
        embed_dim: LDM ``embed_dim`` (latent channels after ``quant_conv``); must equal ``z_channels``.
        scaling_factor: latent scale (0.18215 for SD / MVDream).

    Returns:
        kwargs for ``diffusers.AutoencoderKL(**kwargs)``.

    Raises:
        ValueError: for ddconfigs diffusers' AutoencoderKL cannot express (attention in the down/up levels,
            single-z posterior, embed_dim != z_channels, dropout).
    """
    if not ddconfig.get("double_z", True):
        raise ValueError("ddconfig.double_z=False (no posterior variance) is not an AutoencoderKL; "
                         "use a KL-VAE config.")
    if list(ddconfig.get("attn_resolutions", [])):
        raise ValueError(f"ddconfig.attn_resolutions={list(ddconfig['attn_resolutions'])} is not supported: "
                         "diffusers' AutoencoderKL only has attention in the mid block. Use [] (SD VAE).")
    if embed_dim != ddconfig["z_channels"]:
        raise ValueError(f"embed_dim={embed_dim} != ddconfig.z_channels={ddconfig['z_channels']}: diffusers' "
                         "AutoencoderKL ties quant_conv's width to latent_channels.")
    if float(ddconfig.get("dropout", 0.0)) != 0.0:
        raise ValueError(f"ddconfig.dropout={ddconfig['dropout']} is not supported (diffusers' VAE has no dropout).")
    levels = len(ddconfig["ch_mult"])
    return {
        "in_channels": int(ddconfig["in_channels"]),
        "out_channels": int(ddconfig["out_ch"]),
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [int(ddconfig["ch"]) * int(m) for m in ddconfig["ch_mult"]],
        "layers_per_block": int(ddconfig["num_res_blocks"]),
        "act_fn": "silu",
        "latent_channels": int(ddconfig["z_channels"]),
        "norm_num_groups": 32,
        "sample_size": int(ddconfig["resolution"]),
        "scaling_factor": float(scaling_factor),
    }


def _as_linear(weight: Tensor) -> Tensor:
    # 1x1 conv [C_out, C_in, 1, 1] -> linear [C_out, C_in]; biases and already-2D tensors pass through.
    return weight.reshape(weight.shape[0], weight.shape[1]) if weight.ndim == 4 else weight


def rename_ldm_vae_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename (and reshape) LDM VAE tensors to diffusers ``AutoencoderKL`` names.

    Args:
        state_dict: ``first_stage_model.*`` tensors with the prefix stripped.

    Returns:
        a new dict with diffusers names; input tensors are not modified (reshapes are views).

    Raises:
        ValueError: listing every name that matches no rule (a different VAE layout or a wrong prefix).
    """
    up_indices = [int(m.group(1)) for name in state_dict if (m := _UP_BLOCK.match(name) or _UP_SAMPLE.match(name))]
    num_up = max(up_indices) + 1 if up_indices else 0
    out: dict[str, Tensor] = {}
    leftovers: list[str] = []
    for name, tensor in state_dict.items():
        if _UNCHANGED.match(name):
            out[name] = tensor
        elif m := _NORM_OUT.match(name):
            out[f"{m.group(1)}.conv_norm_out.{m.group(2)}"] = tensor
        elif (m := _DOWN_BLOCK.match(name)) and m.group(3) in _RESNET_PARTS:
            part = _RESNET_PARTS[m.group(3)]
            out[f"encoder.down_blocks.{m.group(1)}.resnets.{m.group(2)}.{part}.{m.group(4)}"] = tensor
        elif m := _DOWN_SAMPLE.match(name):
            out[f"encoder.down_blocks.{m.group(1)}.downsamplers.0.conv.{m.group(2)}"] = tensor
        elif (m := _UP_BLOCK.match(name)) and m.group(3) in _RESNET_PARTS:
            part = _RESNET_PARTS[m.group(3)]
            up = num_up - 1 - int(m.group(1))
            out[f"decoder.up_blocks.{up}.resnets.{m.group(2)}.{part}.{m.group(4)}"] = tensor
        elif m := _UP_SAMPLE.match(name):
            out[f"decoder.up_blocks.{num_up - 1 - int(m.group(1))}.upsamplers.0.conv.{m.group(2)}"] = tensor
        elif (m := _MID_BLOCK.match(name)) and m.group(3) in _RESNET_PARTS:
            part = _RESNET_PARTS[m.group(3)]
            out[f"{m.group(1)}.mid_block.resnets.{int(m.group(2)) - 1}.{part}.{m.group(4)}"] = tensor
        elif (m := _MID_ATTN.match(name)) and m.group(2) in _ATTN_PARTS:
            value = tensor if m.group(2) == "norm" else _as_linear(tensor)
            out[f"{m.group(1)}.mid_block.attentions.0.{_ATTN_PARTS[m.group(2)]}.{m.group(3)}"] = value
        else:
            leftovers.append(name)
    if leftovers:
        shown = "\n    ".join(sorted(leftovers)[:20])
        raise ValueError(
            f"LDM VAE mapping: {len(leftovers)} key(s) match no LDM KL-VAE name (is the 'first_stage_model.' prefix "
            f"stripped, and is this an SD-style KL-VAE?):\n    {shown}"
        )
    return out


def convert_ldm_vae_state_dict(state_dict: Mapping[str, Tensor],
                               diffusers_config: Mapping[str, Any]) -> dict[str, Tensor]:
    """Rename LDM VAE tensors and verify them against a diffusers ``AutoencoderKL(**diffusers_config)``.

    The reference model is built on the meta device, so this costs no memory.

    Args:
        state_dict: ``first_stage_model.*`` tensors, prefix stripped.
        diffusers_config: kwargs from ``diffusers_vae_config``.

    Returns:
        diffusers-named tensors that load with ``strict=True`` into ``AutoencoderKL(**diffusers_config)``.

    Raises:
        ValueError: unknown LDM names; ``StateDictMismatchError`` (a ValueError) listing missing, unexpected and
            shape-mismatched keys.
    """
    renamed = rename_ldm_vae_state_dict(state_dict)
    with torch.device("meta"):
        reference = AutoencoderKL(**diffusers_config)
    check_state_dict(renamed, reference.state_dict(), "VAE (first_stage_model.*)")
    return renamed
