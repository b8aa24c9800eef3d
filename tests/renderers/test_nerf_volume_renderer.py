"""nerf-volume-renderer's checkpointed ray groups: the group rule, and the same images and parameter gradients with
checkpointing on and off (several groups forced by a small ``checkpoint_samples``); the mask and patch renderers
never checkpoint."""

import pytest
import torch

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
    ray_groups,
)
from fourdfy.utils import device_memory
from fourdfy.utils.device_memory import available_device_memory

FIELDS = ("comp_rgb", "comp_rgb_fg", "comp_rgb_bg", "opacity", "depth", "z_variance", "deformation")
DEFORM_ENC = {"otype": "HashGridSpatialTimeDeform", "n_levels": 4, "log2_hashmap_size": 10, "base_resolution": 8,
              "per_level_scale": 1.5, "static": False,
              "time_encoding_config": {"otype": "Grid", "type": "Hash", "n_levels": 2, "log2_hashmap_size": 10,
                                       "base_resolution": 4, "per_level_scale": 1.5},
              "time_network_config": {"otype": "VanillaMLP", "n_neurons": 16, "n_hidden_layers": 1}}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# the group rule
# ---------------------------------------------------------------------------------------------------------------


def test_ray_groups_docstring_example():
    ray_indices = torch.tensor([0, 0, 1, 1, 1, 3, 4, 4])
    assert ray_groups(ray_indices, 6, 3) == [(0, 1, 0, 2), (1, 4, 2, 6), (4, 6, 6, 8)]
    assert ray_groups(ray_indices, 6, 8) == [(0, 6, 0, 8)]  # S <= group_samples: one group
    assert ray_groups(ray_indices[:0], 6, 3) == [(0, 6, 0, 0)]


def test_ray_groups_long_first_ray_takes_the_leading_empty_rays():
    # rays 0-1 have no samples and ray 2 more than a group: the cuts inside ray 2 are dropped (no empty group)
    ray_indices = torch.tensor([2, 2, 2, 2, 2, 3, 3, 5])
    assert ray_groups(ray_indices, 7, 2) == [(0, 3, 0, 5), (3, 7, 5, 8)]


@pytest.mark.parametrize("group", [1, 3, 7, 50])
def test_ray_groups_cover_every_ray_and_sample_in_order(group):
    g = torch.Generator().manual_seed(group)
    counts = torch.randint(0, 9, (40,), generator=g)
    counts[:3] = 0  # leading rays without samples
    ray_indices = torch.repeat_interleave(torch.arange(40), counts)
    groups = ray_groups(ray_indices, 40, group)
    assert groups[0][0] == 0 and groups[0][2] == 0
    assert groups[-1][1] == 40 and groups[-1][3] == ray_indices.shape[0]
    for (_, r1, _, s1), (r0, _, s0, _) in zip(groups[:-1], groups[1:]):
        assert (r1, s1) == (r0, s0)
    longest = int(counts.max())
    for r0, r1, s0, s1 in groups:
        assert r1 > r0 and s1 > s0
        assert s1 - s0 < group + longest
        # whole rays: the group's samples are exactly those of its rays
        assert int(counts[r0:r1].sum()) == s1 - s0
        assert bool(((ray_indices[s0:s1] >= r0) & (ray_indices[s0:s1] < r1)).all())
    if ray_indices.shape[0] > group:
        assert len(groups) >= 2


def test_ray_groups_refuses_a_zero_group():
    with pytest.raises(ValueError, match="group_samples"):
        ray_groups(torch.tensor([0, 1]), 2, 0)


# ---------------------------------------------------------------------------------------------------------------
# the renderer with and without checkpointing
# ---------------------------------------------------------------------------------------------------------------


def parts(encoding=None, random_aug=False):
    torch.manual_seed(0)
    enc = encoding or {"otype": "HashGridSpatialTime", "n_levels": 4, "n_features_per_level": 2,
                       "log2_hashmap_size": 10, "base_resolution": 8, "per_level_scale": 1.5, "static": False}
    geo = ImplicitVolume({"pos_encoding_config": enc})
    with torch.no_grad():  # a field with structure, so that the images are not uniform
        for p in geo.encoding.parameters():
            p.uniform_(-1.0, 1.0)
    mlp = {"otype": "VanillaMLP", "activation": "ReLU", "n_neurons": 8, "n_hidden_layers": 1}
    material = NoMaterial({"input_feature_dims": geo.cfg.n_feature_dims, "mlp_network_config": mlp})
    background = NeuralEnvironmentMapBackground({"random_aug": random_aug, "random_aug_prob": 0.5})
    return geo, material, background


def video_batch(size=10, times=(0.0, 0.4, 0.9)):
    return make_batch(torch.full((1,), 20.0), torch.full((1,), 30.0), torch.full((1,), 2.6), torch.full((1,), 40.0),
                      size, size, torch.tensor(times), BatchKind.VIDEO)  # fmt: skip


def renderers(geo, mat, bg, checkpoint_samples, randomized=False):
    out = []
    for n in (0, checkpoint_samples):
        r = NeRFVolumeRenderer({"num_samples_per_ray": 48, "randomized": randomized, "checkpoint_samples": n},
                               geo, mat, bg)  # fmt: skip
        r.train()
        r.update_step(0, 0)  # every cell occupied (warm-up)
        out.append(r)
    return out


def count_group_calls(renderer):
    calls = []
    inner = renderer._shade_and_composite_group

    def spy(*args):
        calls.append(torch.is_grad_enabled())
        return inner(*args)

    renderer._shade_and_composite_group = spy
    return calls


def render_and_grads(renderer, batch, modules, seed=0):
    torch.manual_seed(seed)
    for m in modules:
        m.zero_grad()
    out = renderer(batch)
    loss = (out.comp_rgb * torch.linspace(0.5, 1.5, 3)).sum() + out.depth.sum() + out.z_variance.sum()
    if out.deformation is not None:
        loss = loss + out.deformation.square().sum()
    loss.backward()
    grads = {f"{i}.{name}": p.grad.clone() for i, m in enumerate(modules) for name, p in m.named_parameters()}
    return out, grads


@pytest.mark.parametrize("encoding", [None, DEFORM_ENC], ids=["hash-grid-4d", "deformation"])
def test_checkpointed_groups_give_the_plain_images_and_gradients(encoding):
    geo, mat, bg = parts(encoding)
    plain, ckpt = renderers(geo, mat, bg, checkpoint_samples=200)
    calls = count_group_calls(ckpt)
    batch = video_batch()
    ref, ref_grads = render_and_grads(plain, batch, (geo, mat, bg))
    out, grads = render_and_grads(ckpt, batch, (geo, mat, bg))
    assert ref.num_samples == out.num_samples > 4 * 200
    assert float(ref.opacity.detach().std()) > 0
    # several groups in the forward, each recomputed once in backward
    n_groups = len(calls) // 2
    assert n_groups >= 4 and calls == [True] * (2 * n_groups)
    assert (ref.deformation is None) == (encoding is None)
    for f in FIELDS:
        if getattr(ref, f) is not None:
            torch.testing.assert_close(getattr(out, f), getattr(ref, f), atol=1e-6, rtol=1e-5)
    assert ref_grads.keys() == grads.keys() and len(grads) >= 6
    for name, g in ref_grads.items():
        assert float(g.abs().sum()) > 0, name
        torch.testing.assert_close(grads[name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_checkpointed_groups_replay_the_random_draws():
    # stratified sampling and the random background draw from the global RNG: the same seed, the same images
    geo, mat, bg = parts(random_aug=True)
    plain, ckpt = renderers(geo, mat, bg, checkpoint_samples=150, randomized=True)
    batch = video_batch(times=(0.2, 0.7))
    for seed in range(3):  # random_aug_prob 0.5: both branches of the background
        ref, ref_grads = render_and_grads(plain, batch, (geo, mat), seed)
        ref_next = torch.rand(4)
        out, grads = render_and_grads(ckpt, batch, (geo, mat), seed)
        torch.testing.assert_close(torch.rand(4), ref_next)  # the global RNG advanced alike
        torch.testing.assert_close(out.comp_rgb, ref.comp_rgb, atol=1e-6, rtol=1e-5)
        for name, g in ref_grads.items():
            torch.testing.assert_close(grads[name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_no_checkpointing_in_evaluation_without_grad_or_below_the_threshold():
    geo, mat, bg = parts()
    _, ckpt = renderers(geo, mat, bg, checkpoint_samples=200)
    calls = count_group_calls(ckpt)
    batch = video_batch()
    with torch.no_grad():
        n = ckpt(batch).num_samples
    ckpt.eval()
    ckpt(batch)
    assert n > 200 and calls == []
    ckpt.train()
    ckpt.cfg.checkpoint_samples = n  # not above the threshold: the plain path
    ckpt(batch).comp_rgb.sum().backward()
    assert calls == []


def test_mask_and_patch_renderers_never_checkpoint():
    geo, mat, bg = parts()
    mask = MaskNeRFVolumeRenderer({"num_samples_per_ray": 48, "randomized": False}, geo, mat, bg)
    patch = StableNeRFVolumeRenderer(
        {"base_renderer_type": "mask-nerf-volume-renderer",
         "base_renderer": {"num_samples_per_ray": 48, "randomized": False}}, geo, mat, bg,
    )  # fmt: skip
    full, _ = renderers(geo, mat, bg, checkpoint_samples=200)
    ref = full(video_batch())
    for r, base in ((mask, mask), (patch, patch.base_renderer)):
        r.train()
        r.update_step(0, 0)
        calls = count_group_calls(base)
        for budget in (None, 10**9, 500):
            out = r(video_batch(), budget)
            out.comp_rgb.sum().backward()
            torch.testing.assert_close(out.comp_rgb, ref.comp_rgb, atol=1e-5, rtol=1e-5)
        assert calls == []
    with pytest.raises(ConfigError, match="checkpoint_samples"):
        MaskNeRFVolumeRenderer({"checkpoint_samples": 10}, geo, mat, bg)


def test_checkpoint_samples_is_parsed_and_checked():
    geo, mat, bg = parts()
    assert NeRFVolumeRenderer({}, geo, mat, bg).cfg.checkpoint_samples == 1_000_000
    assert NeRFVolumeRenderer({"checkpoint_samples": 0}, geo, mat, bg).cfg.checkpoint_samples == 0
    with pytest.raises(ConfigError, match="checkpoint_samples"):
        NeRFVolumeRenderer({"checkpoint_samples": -1}, geo, mat, bg)


def test_fits_in_available_memory_follows_its_docstring_example(monkeypatch):
    def fits(n_samples: int, bytes_per_sample: int, available: int, fraction: float) -> bool:
        monkeypatch.setattr(device_memory, "available_device_memory", lambda device: available)
        return device_memory.fits_in_available_memory(n_samples * bytes_per_sample, torch.device("cuda"), fraction)

    assert fits(12_400_000, 3500, 120 * 10**9, 0.5)
    assert not fits(12_400_000, 3500, 10 * 10**9, 0.5)
    assert fits(10, 100, 2000, 0.5) and not fits(11, 100, 2000, 0.5)


@pytest.mark.parametrize(
    "fraction, available, checkpoints",
    [(0.0, 10**12, True), (0.5, 10**12, False), (0.5, 10**3, True), (0.5, None, True)],
)
def test_checkpoint_memory_fraction_skips_checkpointing_only_with_room(monkeypatch, fraction, available, checkpoints):
    """With ``checkpoint_memory_fraction`` (default 0.5) a render that fits the memory left is not checkpointed; 0
    and a device whose memory cannot be read (None: the CPU) keep checkpointing."""
    geo, mat, bg = parts()
    _, ckpt = renderers(geo, mat, bg, checkpoint_samples=200)
    ckpt.cfg.checkpoint_memory_fraction = fraction
    monkeypatch.setattr(device_memory, "available_device_memory", lambda device: available)
    calls = count_group_calls(ckpt)
    out = ckpt(video_batch())
    out.comp_rgb.sum().backward()
    assert out.num_samples > 200 and bool(calls) == checkpoints


def test_available_device_memory():
    assert available_device_memory(torch.device("cpu")) is None
    if torch.cuda.is_available():
        free = available_device_memory(torch.device("cuda"))
        assert 0 < free <= torch.cuda.get_device_properties(0).total_memory


# ---------------------------------------------------------------------------------------------------------------
# shading with the culling pass's encodings
# ---------------------------------------------------------------------------------------------------------------

STATIC_ENC = {"otype": "HashGridSpatialTime", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 10,
              "base_resolution": 8, "per_level_scale": 1.5, "static": True}  # fmt: skip


def count_grid_points(geo):
    """Points encoded by the geometry's hash grids, summed over calls (forward hooks)."""
    from fourdfy.field_components.hash_grid import HashGrid

    seen = []
    for m in geo.modules():
        if isinstance(m, HashGrid):
            m.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    return seen


@pytest.mark.parametrize("kind", ["plain", "checkpointed", "mask"])
@pytest.mark.parametrize("encoding", [None, STATIC_ENC, DEFORM_ENC], ids=["hash-grid-4d", "static", "deformation"])
def test_reusing_the_culling_encoding_changes_no_image_or_gradient(kind, encoding):
    """``reuse_culling_encoding``: the same images and parameter gradients as encoding twice, with the grids
    evaluated only in the culling pass (the deformation field cannot reuse: its grid input depends on weights)."""
    geo, mat, bg = parts(encoding)
    seen = count_grid_points(geo)
    results = {}
    for reuse in (False, True):
        if kind == "mask":
            r = MaskNeRFVolumeRenderer({"num_samples_per_ray": 48, "randomized": False,
                                        "reuse_culling_encoding": reuse}, geo, mat, bg)  # fmt: skip
        else:
            r = NeRFVolumeRenderer({"num_samples_per_ray": 48, "randomized": False, "reuse_culling_encoding": reuse,
                                    "checkpoint_samples": 200 if kind == "checkpointed" else 0}, geo, mat, bg)  # fmt: skip
        r.train()
        r.update_step(0, 0)
        seen.clear()
        torch.manual_seed(0)
        for m in (geo, mat, bg):
            m.zero_grad()
        out = r(video_batch(), 300 if kind == "mask" else None)
        loss = (out.comp_rgb * torch.linspace(0.5, 1.5, 3)).sum() + out.depth.sum() + out.z_variance.sum()
        loss.backward()
        grads = {f"{i}.{n}": p.grad.clone() for i, m in enumerate((geo, mat, bg)) for n, p in m.named_parameters()
                 if p.grad is not None}  # fmt: skip
        results[reuse] = (out, grads, sum(seen))
    (ref, ref_grads, ref_points), (out, grads, points) = results[False], results[True]
    assert out.num_samples == ref.num_samples > 300
    grids = 2  # both grids of the space-time encoding (the static one too: its frozen 4-D grid adds in at t = 0)
    if encoding is DEFORM_ENC:
        assert points == ref_points  # fell back to encoding twice
    else:
        # without reuse the kept samples are encoded again for shading; a checkpointed group's recompute in backward
        # encodes them either way (the culling's encodings serve the forward only: none is held until the backward)
        assert ref_points - points == out.num_samples * grids
    for f in FIELDS:
        if getattr(ref, f) is not None:
            torch.testing.assert_close(getattr(out, f), getattr(ref, f), atol=1e-6, rtol=1e-5)
    assert ref_grads.keys() == grads.keys() and any("encoding" in n for n in grads)
    for name, g in ref_grads.items():
        assert float(g.abs().sum()) > 0, name
        torch.testing.assert_close(grads[name], g, atol=1e-6, rtol=1e-5, msg=name)
