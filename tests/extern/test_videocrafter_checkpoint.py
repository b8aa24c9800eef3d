"""load_videocrafter2 on a tiny random checkpoint in the official (Lightning) layout, and its errors. No network."""

import pickle
import warnings
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from torch import Tensor
from transformers import CLIPTextModel

from extern.ldm.schedule import alphas_cumprod, schedule_buffers
from extern.ldm.text_encoder import convert_open_clip_text_state_dict
from extern.ldm.vae import diffusers_vae_config
from extern.videocrafter import (
    CONFIG_KEY,
    HUB_REPO_ID,
    VideoCrafter2CheckpointError,
    VideoCrafterUNetModel,
    load_videocrafter2,
    scale_arr,
)

from ldm_layout import open_clip_text_tower, tiny_text_config, to_ldm_vae  # test helper next to this file

WIDTH, HEADS, RESBLOCKS, VOCAB, CONTEXT = 32, 2, 3, 50, 8

UNET_CONFIG = {
    "in_channels": 4, "out_channels": 4, "model_channels": 32, "attention_resolutions": [1, 2],
    "num_res_blocks": 1, "channel_mult": [1, 2], "num_head_channels": 16, "transformer_depth": 1,
    "context_dim": WIDTH, "use_linear": True, "use_checkpoint": False, "temporal_conv": True,
    "temporal_attention": True, "temporal_selfatt_only": True, "use_relative_position": False,
    "use_causal_attention": False, "temporal_length": 16, "addition_attention": True, "fps_cond": True,
}
VAE_DDCONFIG = {
    "double_z": True, "z_channels": 4, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
    "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
}
TEXT_CONFIG = tiny_text_config(WIDTH, HEADS, RESBLOCKS, VOCAB, CONTEXT)


@pytest.fixture(scope="module")
def sources() -> dict:
    """Random source modules and the official-layout state dict made from them (13 buffers incl. scale_arr)."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    unet = VideoCrafterUNetModel(**UNET_CONFIG).eval()
    for p in unet.parameters():  # zero-initialised layers would hide bugs; none are zero here anyway
        p.data.add_(0.01 * torch.randn(p.shape, generator=g))
    vae = AutoencoderKL(**diffusers_vae_config(VAE_DDCONFIG)).eval()
    text_tower = open_clip_text_tower(g, WIDTH, RESBLOCKS, VOCAB, CONTEXT)
    text = CLIPTextModel(TEXT_CONFIG).eval()
    text.load_state_dict(convert_open_clip_text_state_dict(text_tower, TEXT_CONFIG), strict=True)
    flat: dict[str, Tensor] = {**schedule_buffers(), "scale_arr": scale_arr()}
    flat.update({f"model.diffusion_model.{k}": v.clone() for k, v in unet.state_dict().items()})
    flat.update({f"first_stage_model.{k}": v for k, v in to_ldm_vae(vae.state_dict(), 2).items()})
    flat.update({f"cond_stage_model.model.{k}": v for k, v in text_tower.items()})
    return {"unet": unet, "vae": vae, "text": text, "flat": flat}


def _save(path: Path, obj: object, **kwargs: object) -> Path:
    torch.save(obj, path, **kwargs)
    return path


def _lightning(flat: dict[str, Tensor]) -> dict:
    # what model.ckpt holds: a Lightning checkpoint with the state dict under "state_dict"
    return {"state_dict": flat, "epoch": 0, "global_step": 10, "pytorch-lightning_version": "1.8.3"}


def _load(path: object, **kwargs: object):
    return load_videocrafter2(path, unet_config=UNET_CONFIG, vae_ddconfig=VAE_DDCONFIG, text_config=TEXT_CONFIG,
                              **kwargs)


def _assert_same_outputs(models, sources: dict) -> None:
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 4, 3, 8, 8, generator=g), torch.tensor([10, 900])
    ctx, fps = torch.randn(2, 5, WIDTH, generator=g), torch.tensor([8, 16])
    img = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    tokens = torch.tensor([[48, 3, 7, 49, 0, 0, 0, 0], [48, 1, 2, 3, 4, 5, 49, 0]])
    with torch.no_grad():
        assert torch.equal(models.unet(x, t, ctx, fps), sources["unet"](x, t, ctx, fps))
        assert torch.equal(models.vae.encode(img).latent_dist.mean, sources["vae"].encode(img).latent_dist.mean)
        assert torch.equal(models.vae.decode(x[:, :, 0]).sample, sources["vae"].decode(x[:, :, 0]).sample)
        assert torch.equal(models.text_encoder(input_ids=tokens).last_hidden_state,
                           sources["text"](input_ids=tokens).last_hidden_state)


def test_loads_official_layout_and_reproduces_sources(tmp_path: Path, sources: dict) -> None:
    path = _save(tmp_path / "model.ckpt", _lightning(sources["flat"]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        models = _load(path)
    assert not [w for w in caught if "buffer" in str(w.message)]
    _assert_same_outputs(models, sources)
    for module in (models.unet, models.vae, models.text_encoder):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
    assert torch.equal(models.alphas_cumprod, alphas_cumprod())
    assert models.scale_arr.shape == (1400,) and models.scale_arr[0] == 1.0 and models.scale_arr[399] == 0.7
    assert models.path == path


def test_flat_and_deepspeed_layouts_load(tmp_path: Path, sources: dict) -> None:
    _assert_same_outputs(_load(_save(tmp_path / "flat.pt", sources["flat"])), sources)
    wrapped = {"module": {f"_forward_module.{k}": v for k, v in sources["flat"].items()}}
    _assert_same_outputs(_load(_save(tmp_path / "deepspeed.ckpt", wrapped)), sources)


def test_options_without_text_and_with_dtype(tmp_path: Path, sources: dict) -> None:
    no_text = {k: v for k, v in sources["flat"].items() if not k.startswith("cond_stage_model.")}
    models = _load(_save(tmp_path / "no_text.ckpt", _lightning(no_text)), load_text_encoder=False)
    assert models.text_encoder is None
    models = _load(_save(tmp_path / "full.ckpt", _lightning(sources["flat"])), dtype=torch.bfloat16, device="cpu")
    assert {p.dtype for p in models.unet.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in models.vae.parameters()} == {torch.bfloat16}
    assert models.alphas_cumprod.dtype == torch.float32


def test_other_scale_arr_warns(tmp_path: Path, sources: dict) -> None:
    flat = {**sources["flat"], "scale_arr": scale_arr(fix_scale_bug=True)}  # (1000,): the bug-fixed table
    with pytest.warns(UserWarning, match="scale_arr"):
        _load(_save(tmp_path / "fixed_scale.ckpt", _lightning(flat)))
    flat = {**sources["flat"], "alphas_cumprod": sources["flat"]["alphas_cumprod"] * 1.01}
    with pytest.warns(UserWarning, match="alphas_cumprod"):
        _load(_save(tmp_path / "other_schedule.ckpt", _lightning(flat)))


def test_missing_file_names_hub_file_and_config_key(tmp_path: Path) -> None:
    with pytest.raises(VideoCrafter2CheckpointError, match="not found") as err:
        _load(tmp_path / "absent.ckpt")
    message = str(err.value)
    assert "absent.ckpt" in message and "VideoCrafter/VideoCrafter2" in message and "model.ckpt" in message
    assert CONFIG_KEY == "system.guidance_video.pretrained_model_name_or_path" and CONFIG_KEY in message
    assert err.value.path == tmp_path / "absent.ckpt"


@pytest.mark.parametrize("path", [None, "", HUB_REPO_ID])
def test_hub_id_or_nothing_means_download_which_fails_offline_clearly(tmp_path: Path, path: object) -> None:
    with pytest.raises(VideoCrafter2CheckpointError, match="hub") as err:
        _load(path, cache_dir=tmp_path / "hf_cache")
    assert "VideoCrafter/VideoCrafter2" in str(err.value) and CONFIG_KEY in str(err.value)


def test_truncated_and_random_files(tmp_path: Path, sources: dict) -> None:
    data = _save(tmp_path / "full.ckpt", _lightning(sources["flat"])).read_bytes()
    random_bytes = torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    for name, payload in (("half.ckpt", data[: len(data) // 2]), ("empty.ckpt", b""),
                          ("random.ckpt", bytes(random_bytes.tolist()))):
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(VideoCrafter2CheckpointError, match="truncated or corrupt") as err:
            _load(tmp_path / name)
        assert name in str(err.value) and "7.4 GB" in str(err.value)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = _save(tmp_path / "objects.ckpt", {"state_dict": {"model.diffusion_model.x": torch.zeros(1)},
                                             "callbacks": pickle.PickleError()})
    with pytest.raises(VideoCrafter2CheckpointError, match="weights_only"):
        _load(path)


def test_wrong_models(tmp_path: Path, sources: dict) -> None:
    # a bare UNet state dict (no LDM prefixes)
    bare = _save(tmp_path / "bare.ckpt", sources["unet"].state_dict())
    with pytest.raises(VideoCrafter2CheckpointError, match=r"not a VideoCrafter2 checkpoint.*model\.diffusion_model"):
        _load(bare)
    # an image LDM (e.g. an SD / MVDream file): no temporal layers -> missing keys named
    image_unet = {k: v for k, v in sources["flat"].items()
                  if not any(part in k for part in ("temopral_conv", "init_attn", "fps_embedding", ".1.2."))}
    with pytest.raises(VideoCrafter2CheckpointError, match="missing keys") as err:
        _load(_save(tmp_path / "image_ldm.ckpt", _lightning(image_unet)))
    assert "fps_embedding.0.weight" in str(err.value) and "image_ldm.ckpt" in str(err.value)
    # a UNet for another context width: shape mismatch, keys named
    other = VideoCrafterUNetModel(**{**UNET_CONFIG, "context_dim": 48}).state_dict()
    flat = {**sources["flat"], **{f"model.diffusion_model.{k}": v for k, v in other.items()}}
    with pytest.raises(VideoCrafter2CheckpointError, match="shape mismatches") as err:
        _load(_save(tmp_path / "ctx48.ckpt", _lightning(flat)))
    assert "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight: [32, 48] vs [32, 32]" in str(err.value)
    # keys outside the layout, e.g. an EMA copy
    flat = {**sources["flat"], "model_ema.decay": torch.tensor(0.999)}
    with pytest.raises(VideoCrafter2CheckpointError, match="model_ema.decay"):
        _load(_save(tmp_path / "ema.ckpt", _lightning(flat)))


def test_config_key_is_prefixed(tmp_path: Path) -> None:
    with pytest.raises(VideoCrafter2CheckpointError, match=rf"^{CONFIG_KEY}: VideoCrafter2 checkpoint not found"):
        _load(tmp_path / "absent.ckpt", config_key=CONFIG_KEY)
