"""OpenCLIP text tower -> transformers CLIPTextModel: the mapped HF model equals a penultimate-layer reference."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import CLIPTextConfig, CLIPTextModel

from extern.ldm.text_encoder import (
    convert_open_clip_text_state_dict,
    rename_open_clip_text_state_dict,
    sd2_text_encoder_config,
)

WIDTH, HEADS, RESBLOCKS, VOCAB, CONTEXT = 64, 4, 3, 97, 16


def tiny_config() -> CLIPTextConfig:
    """HF config of a tiny tower: RESBLOCKS - 1 layers (penultimate features)."""
    return CLIPTextConfig(vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=4 * WIDTH,
                          num_hidden_layers=RESBLOCKS - 1, num_attention_heads=HEADS,
                          max_position_embeddings=CONTEXT, hidden_act="gelu", layer_norm_eps=1e-5)


def random_open_clip_text(seed: int = 0) -> dict[str, Tensor]:
    """Random OpenCLIP-layout text tower (names of cond_stage_model.model.*, prefix stripped)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 1.0) -> Tensor:
        return torch.randn(*shape, generator=g) * scale

    sd = {
        "token_embedding.weight": rnd(VOCAB, WIDTH, scale=0.5),
        "positional_embedding": rnd(CONTEXT, WIDTH, scale=0.2),
        "text_projection": rnd(WIDTH, WIDTH),
        "logit_scale": torch.tensor(4.6),
        "ln_final.weight": 1 + rnd(WIDTH, scale=0.1),
        "ln_final.bias": rnd(WIDTH, scale=0.1),
    }
    for i in range(RESBLOCKS):
        p = f"transformer.resblocks.{i}."
        sd.update({
            p + "ln_1.weight": 1 + rnd(WIDTH, scale=0.1), p + "ln_1.bias": rnd(WIDTH, scale=0.1),
            p + "attn.in_proj_weight": rnd(3 * WIDTH, WIDTH, scale=WIDTH**-0.5),
            p + "attn.in_proj_bias": rnd(3 * WIDTH, scale=0.05),
            p + "attn.out_proj.weight": rnd(WIDTH, WIDTH, scale=WIDTH**-0.5),
            p + "attn.out_proj.bias": rnd(WIDTH, scale=0.05),
            p + "ln_2.weight": 1 + rnd(WIDTH, scale=0.1), p + "ln_2.bias": rnd(WIDTH, scale=0.1),
            p + "mlp.c_fc.weight": rnd(4 * WIDTH, WIDTH, scale=WIDTH**-0.5),
            p + "mlp.c_fc.bias": rnd(4 * WIDTH, scale=0.05),
            p + "mlp.c_proj.weight": rnd(WIDTH, 4 * WIDTH, scale=(4 * WIDTH) ** -0.5),
            p + "mlp.c_proj.bias": rnd(WIDTH, scale=0.05),
        })
    return sd


def open_clip_penultimate(sd: dict[str, Tensor], tokens: Tensor) -> Tensor:
    """Reference: token + positional embedding, causal resblocks 0..n-2, ln_final (FrozenOpenCLIPEmbedder)."""
    n, length = tokens.shape
    x = sd["token_embedding.weight"][tokens] + sd["positional_embedding"][:length]
    causal = torch.full((length, length), float("-inf")).triu(1)
    dh = WIDTH // HEADS
    for i in range(RESBLOCKS - 1):
        p = f"transformer.resblocks.{i}."
        h = F.layer_norm(x, (WIDTH,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"], 1e-5)
        q, k, v = F.linear(h, sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"]).chunk(3, dim=-1)
        q, k, v = (z.reshape(n, length, HEADS, dh).transpose(1, 2) for z in (q, k, v))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh) + causal, dim=-1)
        attn = (weights @ v).transpose(1, 2).reshape(n, length, WIDTH)
        x = x + F.linear(attn, sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"])
        h = F.layer_norm(x, (WIDTH,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"], 1e-5)
        h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"])),
                     sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
        x = x + h
    return F.layer_norm(x, (WIDTH,), sd["ln_final.weight"], sd["ln_final.bias"], 1e-5)


def test_hf_last_hidden_state_equals_open_clip_penultimate() -> None:
    sd = random_open_clip_text()
    config = tiny_config()
    model = CLIPTextModel(config).eval()
    model.load_state_dict(convert_open_clip_text_state_dict(sd, config), strict=True)
    # SOT, a few words, EOT, zero padding (OpenCLIP's tokenizer pads with 0)
    tokens = torch.tensor([[95, 5, 17, 40, 96] + [0] * (CONTEXT - 5),
                           [95] + list(range(1, CONTEXT - 2)) + [96, 0]])
    with torch.no_grad():
        ours = model(input_ids=tokens).last_hidden_state
    expected = open_clip_penultimate(sd, tokens)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    # the last resblock really is unused: perturbing it changes nothing, perturbing block 0 does
    assert not torch.allclose(expected, open_clip_penultimate({**sd, "transformer.resblocks.0.ln_1.bias":
                                                                sd["transformer.resblocks.0.ln_1.bias"] + 1}, tokens))


def test_mapping_drops_last_block_projection_and_logit_scale() -> None:
    sd = random_open_clip_text()
    renamed = rename_open_clip_text_state_dict(sd, num_layers=RESBLOCKS - 1)
    assert not any(f"layers.{RESBLOCKS - 1}." in k for k in renamed)
    assert "text_projection" not in renamed and "logit_scale" not in renamed
    w = sd["transformer.resblocks.1.attn.in_proj_weight"]
    assert torch.equal(renamed["encoder.layers.1.self_attn.q_proj.weight"], w[:WIDTH])
    assert torch.equal(renamed["encoder.layers.1.self_attn.k_proj.weight"], w[WIDTH:2 * WIDTH])
    assert torch.equal(renamed["encoder.layers.1.self_attn.v_proj.weight"], w[2 * WIDTH:])


def test_mapping_rejects_unknown_keys_and_wrong_depth() -> None:
    sd = random_open_clip_text()
    with pytest.raises(ValueError, match="visual.proj"):
        rename_open_clip_text_state_dict({**sd, "visual.proj": torch.zeros(2)}, num_layers=RESBLOCKS - 1)
    with pytest.raises(ValueError, match="expected resblocks 0..3"):
        rename_open_clip_text_state_dict(sd, num_layers=RESBLOCKS)
    with pytest.raises(ValueError, match="missing keys.*\n.*final_layer_norm.bias"):
        convert_open_clip_text_state_dict({k: v for k, v in sd.items() if k != "ln_final.bias"}, tiny_config())


def test_sd2_config_values() -> None:
    c = sd2_text_encoder_config()
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (1024, 23, 16, 4096)
    assert (c.hidden_act, c.layer_norm_eps, c.vocab_size, c.max_position_embeddings) == ("gelu", 1e-5, 49408, 77)
