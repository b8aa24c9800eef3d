"""Full-size VideoCrafter2 modules (built on the meta device) against the official checkpoint's key list.

``videocrafter2_t2v_512_v2.keys.tsv`` lists every tensor name and shape of ``model.ckpt``'s state dict. Nothing here
allocates real memory: all modules and checkpoint stand-ins are meta tensors.
"""

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from torch import Tensor
from transformers import CLIPTextModel

from extern.ldm.checkpoint import TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX
from extern.ldm.text_encoder import convert_open_clip_text_state_dict, reset_position_ids, sd2_text_encoder_config
from extern.ldm.vae import convert_ldm_vae_state_dict, diffusers_vae_config
from extern.videocrafter.checkpoint import BUFFER_NAMES, VIDEOCRAFTER2_VAE_DDCONFIG, reference_buffers, split_checkpoint
from extern.videocrafter.unet import VIDEOCRAFTER2_UNET_CONFIGS, VideoCrafterUNetModel

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "guidance-parity"
KEYS_FILE = FIXTURES / "videocrafter2_t2v_512_v2.keys.tsv"
pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"golden fixture directory {FIXTURES} is absent")


def _shape(text: str) -> tuple[int, ...]:
    # "(1280, 320)" / "(1280,)" / "()"
    inner = text.strip().strip("()")
    return tuple(int(v) for v in inner.split(",") if v.strip())


@pytest.fixture(scope="module")
def official() -> dict[str, tuple[int, ...]]:
    rows = [line.split("\t") for line in KEYS_FILE.read_text().splitlines() if line.strip()]
    return {name: _shape(shape) for name, shape in rows}


def _meta_part(official: dict[str, tuple[int, ...]], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: torch.empty(s, device="meta") for k, s in official.items() if k.startswith(prefix)}


def test_key_file_groups(official: dict[str, tuple[int, ...]]) -> None:
    assert len(official) == 2039
    parts = split_checkpoint({k: torch.empty(s, device="meta") for k, s in official.items()})
    assert (len(parts.unet), len(parts.vae), len(parts.text)) == (1484, 248, 294)
    assert sorted(parts.schedule) == sorted(BUFFER_NAMES)
    reference = reference_buffers()
    assert {k: tuple(t.shape) for k, t in parts.schedule.items()} == {k: tuple(t.shape) for k, t in reference.items()}
    assert parts.schedule["scale_arr"].shape == (1400,)


def test_full_size_unet_has_exactly_the_checkpoint_names_and_shapes(official: dict[str, tuple[int, ...]]) -> None:
    with torch.device("meta"):
        unet = VideoCrafterUNetModel(**VIDEOCRAFTER2_UNET_CONFIGS["t2v_512_v2"])
    ours = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    expected = {k[len(UNET_PREFIX):]: s for k, s in official.items() if k.startswith(UNET_PREFIX)}
    assert sorted(set(ours) - set(expected)) == []
    assert sorted(set(expected) - set(ours)) == []
    assert {k: s for k, s in ours.items() if expected[k] != s} == {}
    assert list(ours) == list(expected)  # even the registration order is the original's
    assert sum(p.numel() for p in unet.parameters()) == 1_413_284_420  # 1413.28 M (guidance-models.md §0)
    # the pieces named in guidance-models.md §2.2
    assert sum(1 for k in ours if k.endswith("temopral_conv.conv1.2.weight")) == 22
    assert ours["init_attn.0.proj_in.weight"] == (512, 320, 1) and ours["init_attn.0.proj_out.weight"] == (320, 512, 1)
    assert ours["input_blocks.1.2.transformer_blocks.0.attn2.to_k.weight"] == (320, 320)
    assert ours["input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] == (320, 1024)
    unet.load_state_dict(_meta_part(official, UNET_PREFIX), strict=True, assign=True)


def test_full_size_vae_rows_load_strictly(official: dict[str, tuple[int, ...]]) -> None:
    config = diffusers_vae_config(VIDEOCRAFTER2_VAE_DDCONFIG)
    mapped = convert_ldm_vae_state_dict(_meta_part(official, VAE_PREFIX), config)
    with torch.device("meta"):
        vae = AutoencoderKL(**config)
    vae.load_state_dict(mapped, strict=True, assign=True)
    assert vae.config.scaling_factor == 0.18215 and vae.config.sample_size == 512
    assert sum(p.numel() for p in vae.parameters()) == sum(t.numel() for t in mapped.values())


def test_full_size_text_rows_load_strictly(official: dict[str, tuple[int, ...]]) -> None:
    config = sd2_text_encoder_config()
    part = _meta_part(official, TEXT_PREFIX)
    assert "transformer.resblocks.23.ln_1.weight" in part  # the 24th block exists; "penultimate" never runs it
    mapped = convert_open_clip_text_state_dict(part, config)
    with torch.device("meta"):
        text = CLIPTextModel(config)
    text.load_state_dict(mapped, strict=True, assign=True)
    reset_position_ids(text)
    assert len(text.encoder.layers) == 23
