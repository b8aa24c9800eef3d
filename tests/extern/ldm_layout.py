"""Test helpers (not tests): build tiny LDM checkpoints in the official layout, independently of ``extern.ldm``.

The inverse name mappings here are written separately from ``extern.ldm.vae`` / ``extern.ldm.text_encoder`` so that
a load round trip through those modules tests them.
"""

import re

import torch
from torch import Tensor
from transformers import CLIPTextConfig

# diffusers -> LDM names of the VAE.
_TO_LDM = [
    (r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block."),
    (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
    (r"\.mid_block\.resnets\.0\.", ".mid.block_1."),
    (r"\.mid_block\.resnets\.1\.", ".mid.block_2."),
    (r"\.mid_block\.attentions\.0\.group_norm\.", ".mid.attn_1.norm."),
    (r"\.mid_block\.attentions\.0\.to_out\.0\.", ".mid.attn_1.proj_out."),
    (r"\.mid_block\.attentions\.0\.to_([qkv])\.", r".mid.attn_1.\1."),
    (r"\.conv_norm_out\.", ".norm_out."),
    (r"\.conv_shortcut\.", ".nin_shortcut."),
]


def to_ldm_vae(state_dict: dict[str, Tensor], levels: int) -> dict[str, Tensor]:
    """A diffusers ``AutoencoderKL`` state dict renamed to LDM ``first_stage_model.*`` names (prefix not added)."""
    out = {}
    for name, tensor in state_dict.items():
        m = re.match(r"^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers\.0)\.(.*)$", name)
        if m:
            kind = "block" if m.group(2) == "resnets" else "upsample"
            name = f"decoder.up.{levels - 1 - int(m.group(1))}.{kind}.{m.group(3)}"
        for pattern, repl in _TO_LDM:
            name = re.sub(pattern, repl, name)
        if ".mid.attn_1." in name and name.endswith("weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        out[name] = tensor.clone()
    return out


def open_clip_text_tower(g: torch.Generator, width: int, resblocks: int, vocab: int,
                         context: int) -> dict[str, Tensor]:
    """Random OpenCLIP text-tower tensors (``cond_stage_model.model.*`` names, prefix not added)."""
    sd = {"token_embedding.weight": torch.randn(vocab, width, generator=g),
          "positional_embedding": torch.randn(context, width, generator=g) * 0.1,
          "text_projection": torch.randn(width, width, generator=g), "logit_scale": torch.tensor(4.6),
          "ln_final.weight": 1 + 0.1 * torch.randn(width, generator=g), "ln_final.bias": torch.zeros(width)}
    shapes = {"ln_1.weight": (width,), "ln_1.bias": (width,), "attn.in_proj_weight": (3 * width, width),
              "attn.in_proj_bias": (3 * width,), "attn.out_proj.weight": (width, width),
              "attn.out_proj.bias": (width,), "ln_2.weight": (width,), "ln_2.bias": (width,),
              "mlp.c_fc.weight": (4 * width, width), "mlp.c_fc.bias": (4 * width,),
              "mlp.c_proj.weight": (width, 4 * width), "mlp.c_proj.bias": (width,)}
    for i in range(resblocks):
        for part, shape in shapes.items():
            sd[f"transformer.resblocks.{i}.{part}"] = torch.randn(*shape, generator=g) * (shape[-1] ** -0.5)
    return sd


def tiny_text_config(width: int, heads: int, resblocks: int, vocab: int, context: int) -> CLIPTextConfig:
    """``CLIPTextConfig`` of the penultimate-layer model of a tower with ``resblocks`` blocks."""
    return CLIPTextConfig(vocab_size=vocab, hidden_size=width, intermediate_size=4 * width,
                          num_hidden_layers=resblocks - 1, num_attention_heads=heads,
                          max_position_embeddings=context, hidden_act="gelu", layer_norm_eps=1e-5)
