"""Packed volume-rendering math: hand-computed values, gradients, packed scans, precision and the slab test."""

import math

import pytest
import torch

from fourdfy.renderers.volume_rendering import (
    accumulate_along_rays,
    exclusive_sum_packed,
    pack_mask,
    packed_info,
    ray_aabb_intersect,
    render_transmittance_from_density,
    render_visibility_from_density,
    render_weight_from_density,
    segment_start_indices,
)

# The worked example of the module docstring.
RAY_INDICES = torch.tensor([0, 0, 0, 1, 1])
T_STARTS = torch.tensor([0.0, 0.5, 1.0, 0.2, 0.7])
T_ENDS = torch.tensor([0.5, 1.0, 1.5, 0.7, 1.2])
SIGMAS = torch.tensor([2.0, 1.0, 4.0, 0.0, 6.0])
N_RAYS = 3
VALUES = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5]])

DOC_TRANS = [1.0000, 0.3679, 0.2231, 1.0000, 1.0000]
DOC_ALPHAS = [0.6321, 0.3935, 0.8647, 0.0000, 0.9502]
DOC_WEIGHTS = [0.6321, 0.1447, 0.1929, 0.0000, 0.9502]
DOC_OPACITY = [[0.9698], [0.9502], [0.0]]
DOC_RGB = [[0.6321, 0.1447, 0.1929], [0.4751, 0.4751, 0.4751], [0.0, 0.0, 0.0]]


def _random_packed(n_rays: int, max_count: int, seed: int, dtype=torch.float32):
    """Random packed samples: per-ray counts in [0, max_count] (some rays empty), contiguous intervals."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, max_count + 1, (n_rays,), generator=g)
    counts[0] = 0  # always include an empty ray
    ray_indices = torch.repeat_interleave(torch.arange(n_rays), counts)
    n = ray_indices.shape[0]
    deltas = torch.rand(n, generator=g, dtype=dtype) * 0.2 + 0.01
    t_starts = torch.rand(n, generator=g, dtype=dtype)  # values are irrelevant to the math except through deltas
    t_ends = t_starts + deltas
    sigmas = torch.rand(n, generator=g, dtype=dtype) * 5.0
    return ray_indices, t_starts, t_ends, sigmas, counts


def test_docstring_example_hand_values():
    weights, trans, alphas = render_weight_from_density(T_STARTS, T_ENDS, SIGMAS, RAY_INDICES, N_RAYS)
    torch.testing.assert_close(trans, torch.tensor(DOC_TRANS), atol=1e-4, rtol=0)
    torch.testing.assert_close(alphas, torch.tensor(DOC_ALPHAS), atol=1e-4, rtol=0)
    torch.testing.assert_close(weights, torch.tensor(DOC_WEIGHTS), atol=1e-4, rtol=0)
    # Exact closed forms, not just the 4-digit table.
    e = math.exp
    exact_trans = [1.0, e(-1.0), e(-1.5), 1.0, 1.0]
    exact_alphas = [1 - e(-1.0), 1 - e(-0.5), 1 - e(-2.0), 0.0, 1 - e(-3.0)]
    torch.testing.assert_close(trans, torch.tensor(exact_trans), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(alphas, torch.tensor(exact_alphas), atol=1e-6, rtol=1e-6)

    trans2, alphas2 = render_transmittance_from_density(T_STARTS, T_ENDS, SIGMAS, RAY_INDICES, N_RAYS)
    torch.testing.assert_close(trans2, trans)
    torch.testing.assert_close(alphas2, alphas)

    opacity = accumulate_along_rays(weights, None, RAY_INDICES, N_RAYS)
    assert opacity.shape == (3, 1)
    torch.testing.assert_close(opacity, torch.tensor(DOC_OPACITY), atol=1e-4, rtol=0)
    assert abs(opacity[0, 0].item() - (1 - e(-3.5))) < 1e-6
    rgb = accumulate_along_rays(weights, VALUES, RAY_INDICES, N_RAYS)
    assert rgb.shape == (3, 3)
    torch.testing.assert_close(rgb, torch.tensor(DOC_RGB), atol=1e-4, rtol=0)


def test_docstring_example_visibility_and_scan():
    vis = render_visibility_from_density(T_STARTS, T_ENDS, SIGMAS, RAY_INDICES, N_RAYS, 0.3, 0.5)
    assert vis.tolist() == [True, False, False, False, True]
    # Without an alpha threshold only the transmittance test applies (sample 2 has T = 0.22 < 0.3).
    vis = render_visibility_from_density(T_STARTS, T_ENDS, SIGMAS, RAY_INDICES, N_RAYS, 0.3, 0.0)
    assert vis.tolist() == [True, True, False, True, True]
    # A tensor threshold <= 0 disables the alpha test, as nerfacc does after clamping alpha_thre to occs.mean().
    vis = render_visibility_from_density(T_STARTS, T_ENDS, SIGMAS, RAY_INDICES, N_RAYS, 0.3, torch.tensor(0.0))
    assert vis.tolist() == [True, True, False, True, True]
    vis = render_visibility_from_density(T_STARTS, T_ENDS, SIGMAS, RAY_INDICES, N_RAYS, 0.3, torch.tensor(0.5))
    assert vis.tolist() == [True, False, False, False, True]

    x = torch.tensor([1.0, 0.5, 2.0, 0.0, 3.0])
    assert exclusive_sum_packed(x, RAY_INDICES, N_RAYS).tolist() == [0.0, 1.0, 1.5, 0.0, 0.0]
    assert segment_start_indices(RAY_INDICES).tolist() == [0, 0, 0, 3, 3]
    assert segment_start_indices(RAY_INDICES, n_rays=4).tolist() == [0, 0, 0, 3, 3]
    sparse = torch.tensor([1, 1, 4, 4, 4, 7])  # rays without samples in between
    assert segment_start_indices(sparse).tolist() == segment_start_indices(sparse, n_rays=9).tolist() == [0, 0, 2, 2, 2, 5]


def test_weights_per_ray_sum_at_most_one_and_match_closed_form():
    ray_indices, t_starts, t_ends, sigmas, counts = _random_packed(200, 40, seed=1)
    sigmas[::7] = 500.0  # some opaque samples
    weights, trans, alphas = render_weight_from_density(t_starts, t_ends, sigmas, ray_indices, 200)
    assert (weights >= 0).all() and (trans <= 1).all() and (alphas <= 1).all()
    opacity = accumulate_along_rays(weights, None, ray_indices, 200)[:, 0]
    assert (opacity <= 1 + 1e-6).all()
    total_optical_depth = torch.zeros(200, dtype=torch.float64).index_add(
        0, ray_indices, (sigmas * (t_ends - t_starts)).double()
    )
    torch.testing.assert_close(opacity.double(), 1 - torch.exp(-total_optical_depth), atol=1e-5, rtol=0)
    assert opacity[counts == 0].abs().max() == 0


def test_gradcheck_accumulated_rgb_wrt_sigmas_and_values():
    ray_indices, t_starts, t_ends, sigmas, _ = _random_packed(5, 4, seed=2, dtype=torch.float64)
    values = torch.rand(sigmas.shape[0], 3, dtype=torch.float64)
    sigmas.requires_grad_(True)
    values.requires_grad_(True)

    def render(s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        w, _, _ = render_weight_from_density(t_starts, t_ends, s, ray_indices, 5)
        return accumulate_along_rays(w, v, ray_indices, 5)

    assert torch.autograd.gradcheck(render, (sigmas, values), eps=1e-6, atol=1e-6)


def test_exclusive_sum_packed_matches_python_loop_and_its_gradient():
    ray_indices, _, _, x, counts = _random_packed(50, 12, seed=3, dtype=torch.float64)
    out = exclusive_sum_packed(x, ray_indices, 50)
    expected = []
    start = 0
    for c in counts.tolist():
        running = 0.0
        for i in range(start, start + c):
            expected.append(running)
            running += x[i].item()
        start += c
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)
    assert out.dtype == x.dtype

    small = _random_packed(4, 4, seed=4, dtype=torch.float64)
    xs = small[3].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: exclusive_sum_packed(v, small[0], 4), (xs,))


def test_exclusive_sum_float64_accumulation_keeps_precision_over_two_million_samples():
    n_rays, per_ray = 4000, 500  # 2e6 samples; the global running sum reaches ~1e6
    g = torch.Generator().manual_seed(5)
    x = torch.rand(n_rays * per_ray, generator=g)
    ray_indices = torch.arange(n_rays).repeat_interleave(per_ray)
    out = exclusive_sum_packed(x, ray_indices, n_rays)
    assert out.dtype == torch.float32
    for ray in (0, 1, 2000, n_rays - 2, n_rays - 1):
        seg = x[ray * per_ray : (ray + 1) * per_ray].double()
        ref = torch.cumsum(seg, 0) - seg
        got = out[ray * per_ray : (ray + 1) * per_ray].double()
        assert (got - ref).abs().max().item() < 1e-4, ray
    # The test can fail: the same subtraction done in float32 is off by far more at the end of the list.
    inclusive32 = torch.cumsum(x, 0)
    naive = (inclusive32 - x) - (inclusive32 - x)[(n_rays - 1) * per_ray]
    seg = x[(n_rays - 1) * per_ray :].double()
    naive_err = (naive[(n_rays - 1) * per_ray :].double() - (torch.cumsum(seg, 0) - seg)).abs().max().item()
    assert naive_err > 1e-3


def test_empty_inputs():
    empty_i = torch.zeros(0, dtype=torch.long)
    empty_f = torch.zeros(0)
    assert exclusive_sum_packed(empty_f, empty_i, 4).shape == (0,)
    w, t, a = render_weight_from_density(empty_f, empty_f, empty_f, empty_i, 4)
    assert w.shape == t.shape == a.shape == (0,)
    out = accumulate_along_rays(w, None, empty_i, 4)
    assert out.shape == (4, 1) and out.abs().sum() == 0
    assert packed_info(empty_i, 2).tolist() == [[0, 0], [0, 0]]


def test_pack_mask_and_packed_info():
    mask = torch.tensor([[True, False, True], [False, False, False], [False, True, True]])
    ray_indices, sample_indices = pack_mask(mask)
    assert ray_indices.tolist() == [0, 0, 2, 2]
    assert sample_indices.tolist() == [0, 2, 1, 2]
    assert ray_indices.dtype == torch.long
    assert packed_info(RAY_INDICES, 3).tolist() == [[0, 3], [3, 2], [5, 0]]


def test_ray_aabb_intersect_hand_rays():
    aabb = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    rays_o = torch.tensor(
        [
            [-3.0, 0.0, 0.0],  # hits through the middle: [2, 4]
            [0.0, 0.0, 0.0],  # origin inside: [0 (near), 1]
            [-3.0, 2.0, 0.0],  # parallel to x, outside the y slab: miss
            [3.0, 0.0, 0.0],  # box behind: miss
            [-3.0, 0.5, -0.5],  # parallel to x, inside y and z slabs: [2, 4]
            [-3.0, -3.0, 0.0],  # diagonal through the corner region: enters at x=-1 (t=2*sqrt2), leaves at y=1
            [-3.0, 0.0, 0.0],  # points away: miss
        ]
    )
    s = 1 / math.sqrt(2)
    rays_d = torch.tensor(
        [[1.0, 0, 0], [0, 0, 1.0], [1.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0], [s, s, 0.0], [-1.0, 0, 0]]
    )
    t_near, t_far, hit = ray_aabb_intersect(rays_o, rays_d, aabb, 0.0, 1e10)
    assert hit.tolist() == [True, True, False, False, True, True, False]
    torch.testing.assert_close(t_near[hit], torch.tensor([2.0, 0.0, 2.0, 2 * math.sqrt(2)]))
    torch.testing.assert_close(t_far[hit], torch.tensor([4.0, 1.0, 4.0, 4 * math.sqrt(2)]))
    assert torch.isinf(t_near[~hit]).all() and torch.isinf(t_far[~hit]).all()

    # Near/far clip the segment; a far plane before the entry is a miss; per-ray planes are accepted.
    t_near, t_far, hit = ray_aabb_intersect(rays_o[:2], rays_d[:2], aabb, 2.5, 3.0)
    assert hit.tolist() == [True, False]
    assert t_near[0].item() == 2.5 and t_far[0].item() == 3.0
    near = torch.tensor([1.0, 0.25])
    far = torch.tensor([1.5, 0.75])
    t_near, t_far, hit = ray_aabb_intersect(rays_o[:2], rays_d[:2], aabb, near, far)
    assert hit.tolist() == [False, True]
    assert t_near[1].item() == 0.25 and t_far[1].item() == 0.75
