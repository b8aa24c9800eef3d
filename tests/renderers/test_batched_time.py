"""Time as a tensor: one packed render of B cameras x T times equals rendering the times one by one.

The reference is the per-frame path the system used before (one render call per time, each a ``[B, 1]`` batch,
stacked along T), on a 4-D field whose temporal grid is non-zero, so the times really differ. Forward values and
gradients of every trainable field parameter are compared for the plain, mask and patch renderers.
"""

import pytest
import torch

from fourdfy.background.neural_environment_map_background import NeuralEnvironmentMapBackground
from fourdfy.data.batch import BatchKind
from fourdfy.data.random_camera import make_batch
from fourdfy.geometry.implicit_volume import ImplicitVolume
from fourdfy.materials.no_material import NoMaterial
from fourdfy.renderers.base import RenderOutput
from fourdfy.renderers.nerf_volume_renderer import MaskNeRFVolumeRenderer, NeRFVolumeRenderer, StableNeRFVolumeRenderer
from fourdfy.utils.tensor_fields import cat_tensors

TIMES = (0.1, 0.55, 0.9)
ENC_4D = {"otype": "HashGridSpatialTime", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 10,
          "base_resolution": 8, "per_level_scale": 1.5, "static": False}  # fmt: skip


def dynamic_parts():
    torch.manual_seed(0)
    geo = ImplicitVolume({"pos_encoding_config": ENC_4D})
    enc = geo.encoding.encoding
    with torch.no_grad():  # static and temporal grids both non-zero: the field changes with t
        enc.encoding.params.uniform_(-1.0, 1.0)
        for p in enc.temporal_parameters():
            p.uniform_(-2.0, 2.0)
    return geo, NoMaterial({}), NeuralEnvironmentMapBackground({})


def make_renderer(name, geo, mat, bg):
    base = {"num_samples_per_ray": 48, "randomized": False}
    if name == "plain":
        return NeRFVolumeRenderer(base, geo, mat, bg)
    if name == "mask":
        return MaskNeRFVolumeRenderer(base, geo, mat, bg)
    return StableNeRFVolumeRenderer(
        {"base_renderer_type": "mask-nerf-volume-renderer", "base_renderer": {**base, "train_max_nums": 10**9}},
        geo, mat, bg,
    )  # fmt: skip


def video_batch(b=2, size=10):
    return make_batch(torch.full((b,), 20.0), torch.arange(b) * 120.0, torch.full((b,), 2.6), torch.full((b,), 40.0),
                      size, size, torch.tensor(TIMES), BatchKind.VIDEO)  # fmt: skip


def per_frame(renderer, batch, budget) -> RenderOutput:
    """The old path: one call per time, outputs stacked along the time axis."""
    outs = [renderer(batch.with_times(torch.full((batch.batch_size, 1), t)), budget) for t in TIMES]
    return cat_tensors(outs, dim=1, reduce={"num_samples": sum})


def grads(geo, out: RenderOutput, weights: torch.Tensor) -> list[torch.Tensor]:
    geo.zero_grad()
    (out.comp_rgb * weights).sum().backward()
    return [p.grad.clone() for p in geo.parameters()]


@pytest.mark.parametrize("name", ["plain", "mask", "patch"])
def test_batched_times_equal_the_per_frame_path(name):
    geo, mat, bg = dynamic_parts()
    renderer = make_renderer(name, geo, mat, bg)
    renderer.train()
    renderer.update_step(0, 0)
    batch = video_batch()
    budget = renderer.gradient_budget(video=True)
    packed = renderer(batch, budget)
    ref = per_frame(renderer, batch, budget)
    assert packed.comp_rgb.shape == (2, len(TIMES), 10, 10, 3)
    # the frames really differ over time, so equality below is not trivial
    assert float((ref.comp_rgb[:, 0] - ref.comp_rgb[:, -1]).detach().abs().max()) > 1e-2
    for f in ("comp_rgb", "opacity", "depth", "z_variance", "comp_rgb_bg"):
        torch.testing.assert_close(getattr(packed, f), getattr(ref, f), atol=1e-5, rtol=1e-5)
    assert packed.num_samples == ref.num_samples
    weights = torch.rand(packed.comp_rgb.shape, generator=torch.Generator().manual_seed(3))
    for g_packed, g_ref in zip(grads(geo, packed, weights), grads(geo, ref, weights)):
        torch.testing.assert_close(g_packed, g_ref, atol=1e-5, rtol=1e-4)
    temporal = list(geo.encoding.encoding.temporal_parameters())
    assert any(float(p.grad.abs().sum()) > 0 for p in temporal)


def test_patch_budget_scales_with_the_number_of_times():
    """4D-fy rendered each of T frames with ``budget // (9 B)`` gradient samples per sub-image; the packed patch
    renderer gives each sub-image ``T`` times that."""
    geo, mat, bg = dynamic_parts()
    patch = StableNeRFVolumeRenderer(
        {"base_renderer_type": "mask-nerf-volume-renderer", "block_nums": [3, 3],
         "base_renderer": {"num_samples_per_ray": 48, "randomized": False, "train_max_nums": 90}},
        geo, mat, bg,
    )  # fmt: skip
    patch.train()
    patch.update_step(0, 0)
    seen = []
    base_forward = patch.base_renderer.forward

    def spy(batch, grad_budget=None):
        seen.append(grad_budget)
        return base_forward(batch, grad_budget)

    patch.base_renderer.forward = spy
    patch(video_batch(b=1), patch.gradient_budget(video=True))
    assert seen == [90 // 9 * len(TIMES)] * 9
