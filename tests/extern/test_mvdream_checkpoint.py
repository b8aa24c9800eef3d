"""load_mvdream on tiny random checkpoints in the official layout, and its error reporting. No network."""

import pickle
import warnings
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file
from torch import Tensor
from transformers import CLIPTextModel

from extern.mvdream.checkpoint import MVDreamCheckpointError, load_mvdream
from extern.ldm.schedule import alphas_cumprod, schedule_buffers
from extern.ldm.text_encoder import convert_open_clip_text_state_dict
from extern.mvdream.unet import MultiViewUNetModel
from extern.ldm.vae import diffusers_vae_config

from ldm_layout import open_clip_text_tower, tiny_text_config, to_ldm_vae

WIDTH, HEADS, RESBLOCKS, VOCAB, CONTEXT = 32, 2, 3, 50, 8

UNET_CONFIG = {
    "image_size": 8, "in_channels": 4, "out_channels": 4, "model_channels": 32, "attention_resolutions": [1, 2],
    "num_res_blocks": 1, "channel_mult": [1, 2], "num_head_channels": 16, "use_spatial_transformer": True,
    "use_linear_in_transformer": True, "transformer_depth": 1, "context_dim": WIDTH, "use_checkpoint": False,
    "legacy": False, "camera_dim": 16,
}
VAE_DDCONFIG = {
    "double_z": True, "z_channels": 4, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
    "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
}
TEXT_CONFIG = tiny_text_config(WIDTH, HEADS, RESBLOCKS, VOCAB, CONTEXT)


@pytest.fixture(scope="module")
def sources() -> dict:
    """Random source modules and the flat official-layout checkpoint dict made from them."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    unet = MultiViewUNetModel(**UNET_CONFIG).eval()
    vae = AutoencoderKL(**diffusers_vae_config(VAE_DDCONFIG)).eval()
    text_tower = open_clip_text_tower(g, WIDTH, RESBLOCKS, VOCAB, CONTEXT)
    text = CLIPTextModel(TEXT_CONFIG).eval()
    text.load_state_dict(convert_open_clip_text_state_dict(text_tower, TEXT_CONFIG), strict=True)
    flat: dict[str, Tensor] = dict(schedule_buffers())
    flat.update({f"model.diffusion_model.{k}": v.clone() for k, v in unet.state_dict().items()})
    flat.update({f"first_stage_model.{k}": v for k, v in to_ldm_vae(vae.state_dict(), 2).items()})
    flat.update({f"cond_stage_model.model.{k}": v for k, v in text_tower.items()})
    return {"unet": unet, "vae": vae, "text": text, "flat": flat}


def _save(path: Path, obj: object, **kwargs: object) -> Path:
    torch.save(obj, path, **kwargs)
    return path


def _load(path: object, **kwargs: object):
    return load_mvdream(path, unet_config=UNET_CONFIG, vae_ddconfig=VAE_DDCONFIG, text_config=TEXT_CONFIG, **kwargs)


def _assert_same_outputs(models, sources: dict) -> None:
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(4, 4, 8, 8, generator=g), torch.tensor([10, 10, 900, 900])
    ctx, cam = torch.randn(4, 5, WIDTH, generator=g), torch.randn(4, 16, generator=g)
    img = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    tokens = torch.tensor([[48, 3, 7, 49, 0, 0, 0, 0], [48, 1, 2, 3, 4, 5, 49, 0]])
    with torch.no_grad():
        assert torch.equal(models.unet(x, t, ctx, cam, num_frames=2), sources["unet"](x, t, ctx, cam, num_frames=2))
        assert torch.equal(models.vae.encode(img).latent_dist.mean, sources["vae"].encode(img).latent_dist.mean)
        assert torch.equal(models.vae.decode(x).sample, sources["vae"].decode(x).sample)
        assert torch.equal(models.text_encoder(input_ids=tokens).last_hidden_state,
                           sources["text"](input_ids=tokens).last_hidden_state)


def test_loads_official_layout_and_reproduces_sources(tmp_path: Path, sources: dict) -> None:
    path = _save(tmp_path / "tiny.pt", sources["flat"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        models = _load(path)
    assert not [w for w in caught if "schedule" in str(w.message)]
    _assert_same_outputs(models, sources)
    for module in (models.unet, models.vae, models.text_encoder):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
    assert torch.equal(models.alphas_cumprod, alphas_cumprod())
    assert models.path == path


def test_wrapped_and_legacy_files_load(tmp_path: Path, sources: dict) -> None:
    wrapped = _save(tmp_path / "lightning.ckpt", {"state_dict": sources["flat"], "epoch": 3, "global_step": 10})
    _assert_same_outputs(_load(wrapped), sources)
    legacy = _save(tmp_path / "legacy.pt", sources["flat"], _use_new_zipfile_serialization=False)
    _assert_same_outputs(_load(legacy), sources)
    safetensors_file = tmp_path / "converted.safetensors"
    save_file({k: v.contiguous() for k, v in sources["flat"].items()}, safetensors_file)
    _assert_same_outputs(_load(safetensors_file), sources)
    (tmp_path / "cut.safetensors").write_bytes(safetensors_file.read_bytes()[:1000])
    with pytest.raises(MVDreamCheckpointError, match="cut.safetensors"):
        _load(tmp_path / "cut.safetensors")


def test_options_without_text_and_with_dtype(tmp_path: Path, sources: dict) -> None:
    no_text = {k: v for k, v in sources["flat"].items() if not k.startswith("cond_stage_model.")}
    models = _load(_save(tmp_path / "no_text.pt", no_text), load_text_encoder=False)
    assert models.text_encoder is None
    models = _load(_save(tmp_path / "full.pt", sources["flat"]), dtype=torch.bfloat16, device="cpu")
    assert {p.dtype for p in models.unet.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in models.vae.parameters()} == {torch.bfloat16}
    assert models.alphas_cumprod.dtype == torch.float32


def test_schedule_deviation_warns(tmp_path: Path, sources: dict) -> None:
    flat = dict(sources["flat"])
    flat["alphas_cumprod"] = flat["alphas_cumprod"] * 1.01
    with pytest.warns(UserWarning, match="alphas_cumprod"):
        _load(_save(tmp_path / "other_schedule.pt", flat))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MVDreamCheckpointError, match="not found") as err:
        _load(tmp_path / "absent.pt")
    assert "MVDream/MVDream" in str(err.value) and "sd-v2.1-base-4view.pt" in str(err.value)
    assert err.value.path == tmp_path / "absent.pt"


def test_offline_hub_download_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(MVDreamCheckpointError, match="hub") as err:
        _load(None, cache_dir=tmp_path / "hf_cache")
    assert "MVDream/MVDream" in str(err.value)


def test_truncated_and_corrupt_files(tmp_path: Path, sources: dict) -> None:
    data = _save(tmp_path / "full.pt", sources["flat"]).read_bytes()
    for name, payload in (("half.pt", data[: len(data) // 2]), ("empty.pt", b""), ("junk.pt", b"not a checkpoint")):
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(MVDreamCheckpointError, match="truncated or corrupt") as err:
            _load(tmp_path / name)
        assert name in str(err.value)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = _save(tmp_path / "objects.pt", {"model.diffusion_model.x": torch.zeros(1), "cfg": pickle.PickleError()})
    with pytest.raises(MVDreamCheckpointError, match="weights_only"):
        _load(path)


def test_wrong_models(tmp_path: Path, sources: dict) -> None:
    # a bare UNet state dict (no LDM prefixes)
    bare = _save(tmp_path / "bare.pt", sources["unet"].state_dict())
    with pytest.raises(MVDreamCheckpointError, match=r"not an MVDream checkpoint.*model\.diffusion_model\."):
        _load(bare)
    # a UNet for another context width: shape mismatch, keys named
    other = MultiViewUNetModel(**{**UNET_CONFIG, "context_dim": 48}).state_dict()
    flat = {**sources["flat"], **{f"model.diffusion_model.{k}": v for k, v in other.items()}}
    with pytest.raises(MVDreamCheckpointError, match="shape mismatches") as err:
        _load(_save(tmp_path / "ctx48.pt", flat))
    assert "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight: [32, 48] vs [32, 32]" in str(err.value)
    # a UNet without the camera MLP: missing keys, named
    flat = {k: v for k, v in sources["flat"].items() if "camera_embed" not in k}
    with pytest.raises(MVDreamCheckpointError, match="missing keys") as err:
        _load(_save(tmp_path / "no_camera.pt", flat))
    assert "camera_embed.0.weight" in str(err.value)
    # keys outside the layout, e.g. an EMA copy
    flat = {**sources["flat"], "model_ema.decay": torch.tensor(0.999)}
    with pytest.raises(MVDreamCheckpointError, match="model_ema.decay"):
        _load(_save(tmp_path / "ema.pt", flat))


def test_config_key_is_prefixed(tmp_path: Path) -> None:
    with pytest.raises(MVDreamCheckpointError, match=r"^system\.guidance\.model_path: MVDream checkpoint not found"):
        _load(tmp_path / "absent.pt", config_key="system.guidance.model_path")
