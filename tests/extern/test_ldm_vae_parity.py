"""LDM KL-VAE -> diffusers AutoencoderKL: key mapping plus numerical parity with the original (golden fixture)."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from extern.ldm.state_dict_check import StateDictMismatchError
from extern.ldm.vae import (
    SD_VAE_DDCONFIG,
    convert_ldm_vae_state_dict,
    diffusers_vae_config,
    rename_ldm_vae_state_dict,
)

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "guidance-parity"
CASE = "ldm_vae_small"
pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"golden fixture directory {FIXTURES} is absent")


@pytest.fixture(scope="module")
def case() -> dict:
    meta = json.loads((FIXTURES / f"{CASE}.json").read_text())
    prefix = meta["state_dict_prefix"]
    raw = load_file(FIXTURES / f"{CASE}.state_dict.safetensors")
    assert all(k.startswith(prefix) for k in raw)
    config = diffusers_vae_config(meta["kwargs"]["ddconfig"], meta["kwargs"]["embed_dim"])
    return {"ldm": {k[len(prefix):]: v for k, v in raw.items()}, "config": config,
            "io": load_file(FIXTURES / f"{CASE}.io.safetensors")}


@pytest.fixture(scope="module")
def vae(case: dict) -> AutoencoderKL:
    model = AutoencoderKL(**case["config"]).eval()
    model.load_state_dict(convert_ldm_vae_state_dict(case["ldm"], case["config"]), strict=True)
    return model


def test_posterior_matches_original(case: dict, vae: AutoencoderKL) -> None:
    io = case["io"]
    with torch.no_grad():
        posterior = vae.encode(io["img"]).latent_dist
    torch.testing.assert_close(posterior.mean, io["posterior_mean"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(posterior.std, io["posterior_std"], rtol=1e-4, atol=1e-5)


def test_decode_of_mean_matches_original(case: dict, vae: AutoencoderKL) -> None:
    io = case["io"]
    with torch.no_grad():
        decoded = vae.decode(io["posterior_mean"]).sample
    # decoder outputs are O(1..3.5); max abs deviation ~1.3e-5 (SDPA vs einsum attention in the mid block)
    torch.testing.assert_close(decoded, io["decoded_from_mean"], rtol=1e-4, atol=1e-5)


def test_mapping_reshapes_attention_and_reverses_up_blocks(case: dict) -> None:
    ldm = case["ldm"]
    renamed = rename_ldm_vae_state_dict(ldm)
    assert len(renamed) == len(ldm)
    q = ldm["encoder.mid.attn_1.q.weight"]
    assert q.ndim == 4 and renamed["encoder.mid_block.attentions.0.to_q.weight"].shape == q.shape[:2]
    assert torch.equal(renamed["decoder.mid_block.attentions.0.to_out.0.weight"],
                       ldm["decoder.mid.attn_1.proj_out.weight"][:, :, 0, 0])
    levels = len(case["config"]["block_out_channels"])
    assert torch.equal(renamed["decoder.up_blocks.0.resnets.2.conv1.weight"],
                       ldm[f"decoder.up.{levels - 1}.block.2.conv1.weight"])
    assert torch.equal(renamed[f"decoder.up_blocks.{levels - 2}.upsamplers.0.conv.weight"],
                       ldm["decoder.up.1.upsample.conv.weight"])
    assert "decoder.up.0.upsample.conv.weight" not in ldm  # the last diffusers up block has no upsampler
    assert torch.equal(renamed["encoder.down_blocks.1.resnets.0.conv_shortcut.weight"],
                       ldm["encoder.down.1.block.0.nin_shortcut.weight"])


def test_mapping_fails_loudly(case: dict) -> None:
    ldm = case["ldm"]
    with pytest.raises(ValueError, match="encoder.mid.attn_2.q.weight"):
        rename_ldm_vae_state_dict({**ldm, "encoder.mid.attn_2.q.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="match no LDM KL-VAE name"):
        rename_ldm_vae_state_dict({"first_stage_model." + k: v for k, v in ldm.items()})  # prefix not stripped
    missing = {k: v for k, v in ldm.items() if k != "decoder.mid.block_2.norm2.bias"}
    with pytest.raises(StateDictMismatchError, match="decoder.mid_block.resnets.1.norm2.bias") as err:
        convert_ldm_vae_state_dict(missing, case["config"])
    assert err.value.missing == ["decoder.mid_block.resnets.1.norm2.bias"]
    wrong_shape = {**ldm, "quant_conv.weight": torch.zeros(8, 8, 3, 3)}
    with pytest.raises(StateDictMismatchError, match="quant_conv.weight: \\[8, 8, 3, 3\\] vs \\[8, 8, 1, 1\\]"):
        convert_ldm_vae_state_dict(wrong_shape, case["config"])


def test_mapping_works_on_meta_tensors(case: dict) -> None:
    meta = {k: torch.empty(v.shape, device="meta") for k, v in case["ldm"].items()}
    renamed = convert_ldm_vae_state_dict(meta, case["config"])
    assert all(t.is_meta for t in renamed.values())


def test_full_size_config() -> None:
    config = diffusers_vae_config(SD_VAE_DDCONFIG)
    assert config["block_out_channels"] == [128, 256, 512, 512]
    assert (config["layers_per_block"], config["latent_channels"], config["scaling_factor"]) == (2, 4, 0.18215)
    with pytest.raises(ValueError, match="attn_resolutions"):
        diffusers_vae_config({**SD_VAE_DDCONFIG, "attn_resolutions": [32]})
    with pytest.raises(ValueError, match="embed_dim"):
        diffusers_vae_config(SD_VAE_DDCONFIG, embed_dim=3)
