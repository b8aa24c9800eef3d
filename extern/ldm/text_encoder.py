"""OpenCLIP ViT-H/14 text tower (``cond_stage_model.model.*``) -> transformers ``CLIPTextModel`` (SD-2 config).

MVDream conditions on ``FrozenOpenCLIPEmbedder(layer="penultimate")``: token + positional embedding, the causal
residual blocks 0..N-2 (all but the last), then ``ln_final``. A transformers ``CLIPTextModel`` with N-1 layers
computes the same function as its ``last_hidden_state`` (guidance-models.md §1.4), so the checkpoint's tower maps
onto it as follows (transformers 5 names carry no ``text_model.`` prefix):

    OpenCLIP (prefix stripped)                     CLIPTextModel
    token_embedding.weight                      -> embeddings.token_embedding.weight
    positional_embedding                        -> embeddings.position_embedding.weight
    transformer.resblocks.{i}.ln_1.*            -> encoder.layers.{i}.layer_norm1.*
    transformer.resblocks.{i}.attn.in_proj_*    -> encoder.layers.{i}.self_attn.{q,k,v}_proj.*   (split in q,k,v order)
    transformer.resblocks.{i}.attn.out_proj.*   -> encoder.layers.{i}.self_attn.out_proj.*
    transformer.resblocks.{i}.ln_2.*            -> encoder.layers.{i}.layer_norm2.*
    transformer.resblocks.{i}.mlp.c_fc.*        -> encoder.layers.{i}.mlp.fc1.*
    transformer.resblocks.{i}.mlp.c_proj.*      -> encoder.layers.{i}.mlp.fc2.*
    ln_final.*                                  -> final_layer_norm.*

Dropped on purpose: the last resblock (index N-1 = 23 for ViT-H; "penultimate" never runs it),
``text_projection`` and ``logit_scale`` (only used for CLIP's pooled/contrastive output, not for conditioning).
"""

import re
from collections.abc import Mapping

import torch
from torch import Tensor
from transformers import CLIPTextConfig, CLIPTextModel

from extern.ldm.state_dict_check import check_state_dict

# Keys of the OpenCLIP text tower that the penultimate-layer encoder does not use.
DROPPED_TOP_LEVEL_KEYS = ("text_projection", "logit_scale")

_RESBLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_LAYER_PARTS = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_TOP_LEVEL = {
    "token_embedding.weight": "embeddings.token_embedding.weight",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_final.weight": "final_layer_norm.weight",
    "ln_final.bias": "final_layer_norm.bias",
}


def sd2_text_encoder_config() -> CLIPTextConfig:
    """transformers ``CLIPTextConfig`` of SD 2.x's text encoder (OpenCLIP ViT-H/14 text tower minus its last layer).

    hidden 1024, 23 layers, 16 heads, MLP 4096 with exact GELU, LayerNorm eps 1e-5, vocab 49408, 77 positions.
    Token ids keep transformers' defaults (bos 49406, eos 49407); they only affect ``pooler_output``, which the
    guidance does not use.
    """
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=23,
        num_attention_heads=16,
        max_position_embeddings=77,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
    )


def rename_open_clip_text_state_dict(state_dict: Mapping[str, Tensor], num_layers: int) -> dict[str, Tensor]:
    """Map OpenCLIP text-tower tensors onto ``CLIPTextModel`` names, keeping resblocks 0..num_layers-1.

    Args:
        state_dict: ``cond_stage_model.model.*`` tensors with the prefix stripped.
        num_layers: ``num_hidden_layers`` of the target config; the tower must have exactly ``num_layers + 1``
            resblocks (the last one is dropped: penultimate-layer features).

    Returns:
        a new dict with transformers names (q/k/v are views into ``in_proj_*``).

    Raises:
        ValueError: unknown keys, or a resblock count other than ``num_layers + 1``.
    """
    block_ids = {int(m.group(1)) for name in state_dict if (m := _RESBLOCK.match(name))}
    if block_ids != set(range(num_layers + 1)):
        found = f"{len(block_ids)} (indices {min(block_ids)}..{max(block_ids)})" if block_ids else "none"
        raise ValueError(
            f"OpenCLIP text mapping: expected resblocks 0..{num_layers} ({num_layers + 1} blocks, the last one "
            f"dropped for penultimate features) but found {found}; the text encoder config does not fit this tower."
        )
    out: dict[str, Tensor] = {}
    leftovers: list[str] = []
    for name, tensor in state_dict.items():
        if name in _TOP_LEVEL:
            out[_TOP_LEVEL[name]] = tensor
        elif name in DROPPED_TOP_LEVEL_KEYS:
            continue
        elif m := _RESBLOCK.match(name):
            index, part = int(m.group(1)), m.group(2)
            if index == num_layers:
                continue  # the final resblock: unused by penultimate-layer conditioning
            prefix = f"encoder.layers.{index}."
            if part in _LAYER_PARTS:
                out[prefix + _LAYER_PARTS[part]] = tensor
            elif part in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = "weight" if part.endswith("weight") else "bias"
                # nn.MultiheadAttention packs [W_q; W_k; W_v] along dim 0.
                q, k, v = tensor.chunk(3, dim=0)
                out[f"{prefix}self_attn.q_proj.{kind}"] = q
                out[f"{prefix}self_attn.k_proj.{kind}"] = k
                out[f"{prefix}self_attn.v_proj.{kind}"] = v
            else:
                leftovers.append(name)
        else:
            leftovers.append(name)
    if leftovers:
        shown = "\n    ".join(sorted(leftovers)[:20])
        raise ValueError(
            f"OpenCLIP text mapping: {len(leftovers)} key(s) match no OpenCLIP text-tower name (is the "
            f"'cond_stage_model.model.' prefix stripped, and is this an OpenCLIP text tower?):\n    {shown}"
        )
    return out


def convert_open_clip_text_state_dict(state_dict: Mapping[str, Tensor], config: CLIPTextConfig) -> dict[str, Tensor]:
    """Rename OpenCLIP text tensors and verify them against a meta-built ``CLIPTextModel(config)``.

    Args:
        state_dict: ``cond_stage_model.model.*`` tensors, prefix stripped.
        config: target config (``sd2_text_encoder_config()`` for MVDream / SD 2.x).

    Returns:
        tensors that load with ``strict=True`` into ``CLIPTextModel(config)``.

    Raises:
        ValueError: unknown keys or wrong depth; ``StateDictMismatchError`` (a ValueError) listing missing,
            unexpected and shape-mismatched keys.
    """
    renamed = rename_open_clip_text_state_dict(state_dict, config.num_hidden_layers)
    with torch.device("meta"):
        reference = CLIPTextModel(config)
    check_state_dict(renamed, reference.state_dict(), "text encoder (cond_stage_model.model.*)")
    return renamed


def reset_position_ids(model: CLIPTextModel) -> None:
    """Recreate ``embeddings.position_ids`` (a non-persistent buffer, so never in a checkpoint) on the model's device.

    Needed after building the model on the meta device and loading weights with ``assign=True``.
    """
    embeddings = model.embeddings
    device = embeddings.position_embedding.weight.device
    num_positions = embeddings.position_embedding.weight.shape[0]
    embeddings.position_ids = torch.arange(num_positions, device=device).expand(1, -1)
