"""Renderers: the low-VRAM mask and patch renderers give the full renderer's images; budgets and deformation."""

import dataclasses
from pathlib import Path

import pytest
import torch

import launch
from fourdfy.background.neural_environment_map_background import NeuralEnvironmentMapBackground
from fourdfy.config import ConfigError
from fourdfy.data.batch import BatchKind
from fourdfy.data.random_camera import make_batch
from fourdfy.geometry.implicit_volume import ImplicitVolume
from fourdfy.materials.no_material import NoMaterial
from fourdfy.renderers.nerf_volume_renderer import (
    MaskNeRFVolumeRenderer,
    NeRFVolumeRenderer,
    StableNeRFVolumeRenderer,
)

ROOT = Path(__file__).resolve().parents[2]
ENC = {"otype": "HashGridSpatialTime", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 10,
       "base_resolution": 8, "per_level_scale": 1.5, "static": True}  # fmt: skip


def parts(encoding=ENC, random_aug=False):
    torch.manual_seed(0)
    geo = ImplicitVolume({"pos_encoding_config": encoding})
    with torch.no_grad():  # a field with structure, so that the images are not uniform
        geo.encoding.encoding.encoding.params.uniform_(-1.0, 1.0)
    return geo, NoMaterial({}), NeuralEnvironmentMapBackground({"random_aug": random_aug})


def batch(b=2, size=12, times=(0.0,), kind=BatchKind.MULTI_VIEW):
    return make_batch(torch.full((b,), 20.0), torch.arange(b) * 90.0, torch.full((b,), 2.6), torch.full((b,), 40.0),
                      size, size, torch.tensor(times), kind)  # fmt: skip


def warm(renderer):
    renderer.train()
    renderer.update_step(0, 0)  # fills the occupancy grid (warm-up: every cell)


def test_mask_and_patch_renderers_match_the_full_renderer():
    geo, mat, bg = parts()
    full = NeRFVolumeRenderer({"num_samples_per_ray": 64, "randomized": False}, geo, mat, bg)
    mask = MaskNeRFVolumeRenderer({"num_samples_per_ray": 64, "randomized": False}, geo, mat, bg)
    patch = StableNeRFVolumeRenderer(
        {"base_renderer_type": "mask-nerf-volume-renderer",
         "base_renderer": {"num_samples_per_ray": 64, "randomized": False, "train_max_nums_static": 1000}},
        geo, mat, bg,
    )  # fmt: skip
    for r in (full, mask, patch):
        warm(r)
    b = batch()
    ref = full(b)
    assert ref.num_samples > 500 and float(ref.opacity.detach().std()) > 0
    budget = ref.num_samples // 3
    out_mask = mask(b, budget)
    out_patch = patch(b, patch.gradient_budget(video=False))
    for out in (out_mask, out_patch):
        for f in ("comp_rgb", "opacity", "depth"):
            torch.testing.assert_close(getattr(out, f), getattr(ref, f), atol=1e-5, rtol=1e-5)
    # only the budgeted samples carry gradients, but they do reach the field
    geo.zero_grad()
    out_mask.comp_rgb.sum().backward()
    g_budget = geo.encoding.encoding.encoding.params.grad.abs().sum()
    geo.zero_grad()
    full(b).comp_rgb.sum().backward()
    g_full = geo.encoding.encoding.encoding.params.grad.abs().sum()
    assert 0 < float(g_budget) < float(g_full)


def test_no_grad_chunk_size_changes_no_value():
    """The samples beyond the gradient budget are shaded under no_grad in chunks of ``train_no_grad_chunk_size``:
    one chunk or many, the image and the gradients are the same (each sample is shaded alone)."""
    geo, mat, bg = parts()
    renderers = {size: MaskNeRFVolumeRenderer({"num_samples_per_ray": 64, "randomized": False,
                                               "train_no_grad_chunk_size": size}, geo, mat, bg)
                 for size in (7, 10**9)}  # fmt: skip
    b = batch()
    results = {}
    for size, r in renderers.items():
        warm(r)
        torch.manual_seed(1)  # the same budgeted subset (a random permutation) for both
        out = r(b, 200)
        assert out.num_samples > 1000  # so 7 makes hundreds of chunks beyond the budget
        geo.zero_grad()
        out.comp_rgb.sum().backward()
        results[size] = (out.comp_rgb.detach(), geo.encoding.encoding.encoding.params.grad.clone())
    torch.testing.assert_close(results[7][0], results[10**9][0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(results[7][1], results[10**9][1], atol=1e-6, rtol=1e-6)
    assert results[7][1].abs().sum() > 0
    with pytest.raises(ConfigError, match="train_no_grad_chunk_size"):
        MaskNeRFVolumeRenderer({"train_no_grad_chunk_size": 0}, geo, mat, bg)


def test_patch_renderer_refuses_random_background():
    geo, mat, bg = parts(random_aug=True)
    with pytest.raises(ConfigError, match="random_aug"):
        StableNeRFVolumeRenderer({"base_renderer_type": "mask-nerf-volume-renderer"}, geo, mat, bg)


def test_deformation_is_rendered_for_a_dynamic_deform_field():
    enc = {"otype": "HashGridSpatialTimeDeform", "n_levels": 4, "log2_hashmap_size": 10, "base_resolution": 8,
           "per_level_scale": 1.5, "static": False,
           "time_encoding_config": {"otype": "Grid", "type": "Hash", "n_levels": 2, "log2_hashmap_size": 10,
                                    "base_resolution": 4, "per_level_scale": 1.5},
           "time_network_config": {"otype": "VanillaMLP", "n_neurons": 16, "n_hidden_layers": 1}}  # fmt: skip
    geo, mat, bg = parts(enc)
    r = MaskNeRFVolumeRenderer({"num_samples_per_ray": 32, "randomized": False}, geo, mat, bg)
    warm(r)
    out = r(batch(b=1, times=(0.5,), kind=BatchKind.VIDEO))
    assert out.deformation is not None and out.deformation.shape == (1, 1, 12, 12, 3)
    out.deformation.sum().backward()
    assert geo.encoding.encoding.time_network.layers[0].weight.grad is not None


def test_low_vram_smoke_training(tmp_path):
    rc = launch.main(["--config", str(ROOT / "configs" / "smoke" / "fourdfy_stage_1_low_vram_tiny.yaml"), "--train",
                      "system.prompt_processor.prompt=a cat", f"exp_root_dir={tmp_path}", "trainer.max_steps=6",
                      "trainer.val_check_interval=6", "data.single_view.n_test_views=2"])  # fmt: skip
    assert rc == 0
    (trial,) = (tmp_path / "fourdfy_stage_1_low_vram_tiny").iterdir()
    ckpt = torch.load(trial / "ckpts" / "last.ckpt", map_location="cpu", weights_only=True)
    assert "renderer.base_renderer.estimator.binaries" in ckpt["state_dict"]
    # an mp4 with ffmpeg (imageio-ffmpeg, as in requirements.txt), else the GIF fallback
    assert [p.name for p in (trial / "save").glob("it6-test.*")] in (["it6-test.mp4"], ["it6-test.gif"])
