"""Full-size modules (built on the meta device) against the official checkpoint's key list.

``mvdream_sd-v2.1-base-4view.keys.tsv`` lists every tensor name and shape of ``sd-v2.1-base-4view.pt``. Nothing here
allocates real memory: all modules and checkpoint stand-ins are meta tensors.
"""

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from torch import Tensor
from transformers import CLIPTextModel

from extern.mvdream.checkpoint import TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX, split_checkpoint
from extern.ldm.schedule import SCHEDULE_BUFFER_NAMES
from extern.ldm.text_encoder import convert_open_clip_text_state_dict, reset_position_ids, sd2_text_encoder_config
from extern.mvdream.unet import MVDREAM_UNET_CONFIGS, MultiViewUNetModel
from extern.ldm.vae import convert_ldm_vae_state_dict, diffusers_vae_config

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "guidance-parity"
KEYS_FILE = FIXTURES / "mvdream_sd-v2.1-base-4view.keys.tsv"
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
    assert len(official) == 1244
    meta = {k: torch.empty(s, device="meta") for k, s in official.items()}
    parts = split_checkpoint(meta)
    assert (len(parts.unet), len(parts.vae), len(parts.text)) == (690, 248, 294)
    assert sorted(parts.schedule) == sorted(SCHEDULE_BUFFER_NAMES)
    assert all(t.shape == (1000,) for t in parts.schedule.values())


def test_full_size_unet_has_exactly_the_checkpoint_names_and_shapes(official: dict[str, tuple[int, ...]]) -> None:
    with torch.device("meta"):
        unet = MultiViewUNetModel(**MVDREAM_UNET_CONFIGS["sd-v2.1-base-4view"])
    ours = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    expected = {k[len(UNET_PREFIX):]: s for k, s in official.items() if k.startswith(UNET_PREFIX)}
    assert sorted(set(ours) - set(expected)) == []
    assert sorted(set(expected) - set(ours)) == []
    assert {k: s for k, s in ours.items() if expected[k] != s} == {}
    assert sum(p.numel() for p in unet.parameters()) == 867_572_164  # 867.57 M (guidance-models.md §0)
    unet.load_state_dict(_meta_part(official, UNET_PREFIX), strict=True, assign=True)


def test_full_size_vae_rows_load_strictly(official: dict[str, tuple[int, ...]]) -> None:
    config = diffusers_vae_config()
    mapped = convert_ldm_vae_state_dict(_meta_part(official, VAE_PREFIX), config)
    with torch.device("meta"):
        vae = AutoencoderKL(**config)
    vae.load_state_dict(mapped, strict=True, assign=True)
    assert vae.config.scaling_factor == 0.18215
    assert sum(p.numel() for p in vae.parameters()) == sum(t.numel() for t in mapped.values())


def test_full_size_text_rows_load_strictly(official: dict[str, tuple[int, ...]]) -> None:
    config = sd2_text_encoder_config()
    part = _meta_part(official, TEXT_PREFIX)
    assert "transformer.resblocks.23.ln_1.weight" in part  # the 24th block exists and is dropped on purpose
    mapped = convert_open_clip_text_state_dict(part, config)
    with torch.device("meta"):
        text = CLIPTextModel(config)
    text.load_state_dict(mapped, strict=True, assign=True)
    reset_position_ids(text)
    assert text.embeddings.position_ids.shape == (1, 77)
    assert len(text.encoder.layers) == 23
