"""Multiresolution hash grid: tcnn level layout, indexing, interpolation and gradients."""

import math

import pytest
import torch

from fourdfy.field_components.hash_grid import HashGrid, grid_layout, hash_grid_encode, level_corners, tcnn_module

SCALE_4DFY = 1.447269237440378
PRIMES = [1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737]


# ----------------------------------------------------------------------------------------------------------------
# An independent statement of tcnn's rules (plain Python ints; float32 via torch scalars)
# ----------------------------------------------------------------------------------------------------------------


def tcnn_scale(level: int, per_level_scale: float, base: int) -> float:
    f32 = torch.float32
    log2s = torch.log2(torch.tensor(per_level_scale, dtype=f32))
    s = torch.exp2(torch.tensor(float(level), dtype=f32) * log2s) * torch.tensor(float(base), dtype=f32) - 1.0
    return float(s.to(f32))


def tcnn_level_sizes(d: int, n_levels: int, log2_t: int, base: int, pls: float) -> list[tuple[int, int]]:
    """(resolution, params_in_level) per level for a Hash grid."""
    out = []
    for lvl in range(n_levels):
        res = math.ceil(tcnn_scale(lvl, pls, base)) + 1
        dense = res**d
        aligned = -(-dense // 8) * 8
        out.append((res, min(aligned, 2**log2_t)))
    return out


def tcnn_index(corner: list[int], res: int, size: int) -> int:
    stride, idx = 1, 0
    for c in corner:
        if stride > size:
            break
        idx = (idx + (c % 2**32) * stride) % 2**32
        stride = (stride * res) % 2**32
    if size < stride:
        idx = 0
        for d, c in enumerate(corner):
            idx ^= ((c % 2**32) * PRIMES[d]) % 2**32
    return idx % size


def naive_encode(x: torch.Tensor, table: torch.Tensor, d: int, n_levels: int, log2_t: int, base: int, pls: float) -> torch.Tensor:
    """Point-by-point, corner-by-corner reference (x and table float64)."""
    n_feat = table.shape[1]
    rows = []
    for p in x.tolist():
        feats = []
        offset = 0
        for lvl, (res, size) in enumerate(tcnn_level_sizes(d, n_levels, log2_t, base, pls)):
            scale = tcnn_scale(lvl, pls, base)
            pos = [v * scale + 0.5 for v in p]
            cell = [math.floor(v) for v in pos]
            frac = [v - c for v, c in zip(pos, cell)]
            acc = [0.0] * n_feat
            for corner in range(2**d):
                bits = [(corner >> k) & 1 for k in range(d)]
                w = math.prod(f if b else 1.0 - f for f, b in zip(frac, bits))
                idx = tcnn_index([c + b for c, b in zip(cell, bits)], res, size)
                vals = table[offset + idx].tolist()
                acc = [a + w * v for a, v in zip(acc, vals)]
            feats += acc
            offset += size
        rows.append(feats)
    return torch.tensor(rows, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------------------------
# Layout
# ----------------------------------------------------------------------------------------------------------------


def test_layout_4dfy_3d():
    layout = grid_layout(3, 16, 2, 19, 16, SCALE_4DFY)
    res = [lv.resolution for lv in layout.levels]
    assert res == [16, 24, 34, 49, 71, 102, 148, 213, 308, 446, 646, 934, 1352, 1956, 2831, 4096]
    assert [lv.size for lv in layout.levels[:5]] == [4096, 13824, 39304, 117656, 357912]  # 49^3, 71^3 padded to 8
    assert all(lv.size == 2**19 for lv in layout.levels[5:])
    assert [lv.hashed for lv in layout.levels] == [False] * 5 + [True] * 11
    assert layout.n_entries == 6_299_960
    assert layout.n_params == 12_599_920
    assert layout.n_output_dims == 32
    assert [lv.offset for lv in layout.levels[:3]] == [0, 4096, 4096 + 13824]
    sizes = tcnn_level_sizes(3, 16, 19, 16, SCALE_4DFY)
    assert [r for r, _ in sizes] == res
    assert sum(s for _, s in sizes) * 2 == layout.n_params


def test_layout_4dfy_4d():
    layout = grid_layout(4, 16, 2, 19, 16, SCALE_4DFY)
    assert [lv.size for lv in layout.levels[:2]] == [16**4, 24**4]
    assert [lv.hashed for lv in layout.levels] == [False] * 2 + [True] * 14
    assert layout.n_entries == 7_737_344
    assert layout.n_params == 15_474_688
    assert sum(s for _, s in tcnn_level_sizes(4, 16, 19, 16, SCALE_4DFY)) * 2 == layout.n_params


def test_layout_deformation_time_grid():
    layout = grid_layout(4, 8, 2, 19, 4, SCALE_4DFY)
    assert [lv.resolution for lv in layout.levels] == [4, 6, 9, 13, 18, 26, 37, 54]
    assert [lv.size for lv in layout.levels[:6]] == [256, 1296, 6568, 28568, 104976, 456976]  # 9^4 = 6561 -> 6568
    assert [lv.hashed for lv in layout.levels] == [False] * 6 + [True] * 2
    assert layout.n_params == 3_294_432
    assert layout.n_output_dims == 16


@pytest.mark.parametrize("d,levels,log2_t,base,pls", [(3, 8, 12, 4, 1.7), (4, 6, 14, 3, 2.0), (2, 10, 10, 8, 1.3)])
def test_layout_matches_independent_rule(d, levels, log2_t, base, pls):
    layout = grid_layout(d, levels, 2, log2_t, base, pls)
    assert [(lv.resolution, lv.size) for lv in layout.levels] == tcnn_level_sizes(d, levels, log2_t, base, pls)


def test_dense_and_tiled_layouts():
    dense = grid_layout(3, 3, 1, 6, 4, 2.0, grid_type="Dense")
    assert [lv.size for lv in dense.levels] == [64, 512, 4096]  # res 4, 8, 16 (scales 3, 7, 15): never capped
    assert not any(lv.hashed for lv in dense.levels)
    tiled = grid_layout(3, 3, 1, 6, 4, 2.0, grid_type="Tiled")
    assert [lv.size for lv in tiled.levels] == [64, 64, 64]  # capped at base^3
    assert not any(lv.hashed for lv in tiled.levels)


# ----------------------------------------------------------------------------------------------------------------
# Values
# ----------------------------------------------------------------------------------------------------------------


def _vertex_table(grid: HashGrid, res: int) -> None:
    """Feature 0 = linear function of the vertex, feature 1 = product of coordinates (dense 3-D level)."""
    e = torch.arange(grid.layout.n_entries, dtype=torch.float64)
    cx, cy, cz = e % res, (e // res) % res, e // (res * res)
    grid.params.data = torch.stack([cx + 4 * cy + 16 * cz, cx * cy * cz], dim=1).reshape(-1)


def test_interpolation_hand_value_dense_level():
    grid = HashGrid(3, n_levels=1, n_features_per_level=2, log2_hashmap_size=19, base_resolution=4).double()
    assert grid.layout.levels[0].scale == 3.0 and grid.layout.levels[0].size == 64
    _vertex_table(grid, 4)
    x = torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64)  # pos = 3x + 0.5 = (0.8, 1.1, 1.4)
    out = grid(x)
    # Trilinear interpolation reproduces linear and multilinear vertex functions exactly.
    expected = torch.tensor([[0.8 + 4 * 1.1 + 16 * 1.4, 0.8 * 1.1 * 1.4]], dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_interpolation_wraps_like_tcnn():
    # base 2: scale 1, resolution 2, 8 entries. x = (0.25, 0.5, 0.75) -> pos (0.75, 1.0, 1.25), cell (0, 1, 1).
    grid = HashGrid(3, n_levels=1, n_features_per_level=1, base_resolution=2).double()
    grid.params.data = torch.arange(8, dtype=torch.float64)
    out = grid(torch.tensor([[0.25, 0.5, 0.75]], dtype=torch.float64))
    # Non-zero corners (y frac is 0): (0,1,1)->6, (1,1,1)->7, (0,1,2)->10 % 8 = 2, (1,1,2)->11 % 8 = 3.
    expected = 0.25 * 0.75 * 6 + 0.75 * 0.75 * 7 + 0.25 * 0.25 * 2 + 0.75 * 0.25 * 3
    assert expected == 5.75
    assert out.item() == pytest.approx(expected, abs=1e-12)


def test_hashed_level_hand_index():
    # 2-D, base 16 -> resolution 16, 256 vertices > 2^6 entries: hashed.
    grid = HashGrid(2, n_levels=1, n_features_per_level=1, log2_hashmap_size=6, base_resolution=16).double()
    assert grid.layout.levels[0].hashed
    grid.params.data = torch.randn(64, dtype=torch.float64)
    x = torch.tensor([[(3 - 0.5) / 15, (7 - 0.5) / 15]], dtype=torch.float64)  # exactly on vertex (3, 7)
    row = ((3 * 1) ^ (7 * 2654435761 % 2**32)) % 64
    assert grid(x).item() == pytest.approx(grid.params[row].item(), abs=1e-12)


@pytest.mark.parametrize("d", [3, 4])
def test_vertex_returns_stored_feature(d):
    grid = HashGrid(d, n_levels=1, n_features_per_level=2, log2_hashmap_size=19, base_resolution=4).double()
    grid.params.data.uniform_(-1.0, 1.0)
    vertex = [1, 2, 3, 0][:d]
    x = torch.tensor([[(v - 0.5) / 3.0 for v in vertex]], dtype=torch.float64)  # pos = 3x + 0.5 = vertex
    row = sum(v * 4**k for k, v in enumerate(vertex))
    torch.testing.assert_close(grid(x)[0], grid.params.view(-1, 2)[row], rtol=0, atol=1e-12)


@pytest.mark.parametrize("d", [3, 4])
def test_matches_naive_reference_4dfy_config(d):
    torch.manual_seed(d)
    grid = HashGrid(d, 16, 2, 19, 16, SCALE_4DFY).double()
    grid.params.data.uniform_(-1.0, 1.0)
    x = torch.rand(12, d, dtype=torch.float64) * 1.4 - 0.2  # includes points outside [0, 1] (uint32 wrap)
    expected = naive_encode(x, grid.params.view(-1, 2), d, 16, 19, 16, SCALE_4DFY)
    torch.testing.assert_close(grid(x), expected, rtol=0, atol=1e-10)


def test_float32_output_and_init():
    grid = HashGrid(3, 4, 2, 12, 4, 1.5)
    assert list(grid.state_dict()) == ["params"]
    assert grid.params.shape == (grid.layout.n_params,)
    assert grid.params.abs().max() <= 1e-4
    out = grid(torch.rand(10, 3))
    assert out.shape == (10, 8) and out.dtype == torch.float32
    assert grid(torch.rand(0, 3)).shape == (0, 8)
    with pytest.raises(ValueError, match="expects 3 coordinates"):
        grid(torch.rand(4, 2))


# ----------------------------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------------------------


def _interior_points(layout, n: int, d: int, seed: int) -> torch.Tensor:
    """Random points whose fractional positions stay >= 0.1 from cell boundaries on every level."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(20 * n, d, generator=g, dtype=torch.float64)
    ok = torch.ones(x.shape[0], dtype=torch.bool)
    for lv in layout.levels:
        frac = torch.frac(x * lv.scale + 0.5)
        ok &= ((frac > 0.1) & (frac < 0.9)).all(dim=1)
    assert ok.sum() >= n
    return x[ok][:n].clone()


@pytest.mark.parametrize("d", [3, 4])
def test_gradcheck_params_and_x(d):
    # 2 levels: level 0 dense (res 2), level 1 hashed (res 4 -> 4^d > 32 entries).
    grid = HashGrid(d, n_levels=2, n_features_per_level=2, log2_hashmap_size=5, base_resolution=2, per_level_scale=2.0).double()
    assert [lv.hashed for lv in grid.layout.levels] == [False, True]
    grid.params.data.uniform_(-1.0, 1.0)
    x = _interior_points(grid.layout, 5, d, seed=d).requires_grad_(True)
    params = grid.params.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda xx, pp: hash_grid_encode(xx, pp, grid.layout), (x, params), eps=1e-6, atol=1e-7)


def test_gradients_reach_params_and_x_through_module():
    grid = HashGrid(3, 4, 2, 10, 4, 1.5)
    x = torch.rand(64, 3, requires_grad=True)
    grid(x).square().sum().backward()
    assert grid.params.grad is not None and grid.params.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_frozen_params_still_give_x_gradient():
    grid = HashGrid(3, 4, 2, 10, 4, 1.5).requires_grad_(False)
    grid.params.data.uniform_(-1.0, 1.0)
    x = torch.rand(16, 3, requires_grad=True)
    (gx,) = torch.autograd.grad(grid(x).sum(), x)
    assert gx.abs().sum() > 0 and grid.params.grad is None


def test_param_gradient_is_weight_sum():
    # d(sum of feature 0)/d(row) = sum of the corner weights that hit the row; weights of a point sum to 1.
    grid = HashGrid(3, 1, 1, 19, 4).double()
    x = torch.rand(7, 3, dtype=torch.float64)
    grid(x).sum().backward()
    assert grid.params.grad.sum().item() == pytest.approx(7.0, abs=1e-12)
    rows, weights, _ = level_corners(x, grid.layout.levels[0])
    manual = torch.zeros_like(grid.params).index_add_(0, rows.reshape(-1), weights.reshape(-1))
    torch.testing.assert_close(grid.params.grad, manual)


def test_attach_gradient_gives_the_encodings_gradient_without_encoding():
    """Values encoded without gradient, then attached: the same values, the same table gradient as ``grid(x)``,
    the upstream gradient passed on; chained over two grids as the space-time encoding sums them."""
    torch.manual_seed(0)
    g3, g4 = HashGrid(3, 4, 2, 10, 4, 1.5), HashGrid(4, 4, 2, 10, 4, 1.5)
    for g in (g3, g4):
        g.params.data.uniform_(-1.0, 1.0)
    x = torch.rand(80, 3)
    xt = torch.cat([x, torch.rand(80, 1)], dim=-1)
    weight = torch.randn(80, 8)
    (g3(x) + g4(xt)).mul(weight).sum().backward()
    ref = (g3.params.grad.clone(), g4.params.grad.clone())
    g3.zero_grad(), g4.zero_grad()
    with torch.no_grad():
        values = g3(x) + g4(xt)
    calls = []
    g3.register_forward_hook(lambda *a: calls.append(1))
    attached = g4.attach_gradient(xt, g3.attach_gradient(x, values))
    assert torch.equal(attached, values) and attached.requires_grad and calls == []
    attached.mul(weight).sum().backward()
    assert float(ref[0].abs().sum()) > 0 and float(ref[1].abs().sum()) > 0
    torch.testing.assert_close(g3.params.grad, ref[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(g4.params.grad, ref[1], atol=1e-6, rtol=1e-6)


def test_attach_gradient_passes_the_values_gradient_on_and_checks_its_input():
    grid = HashGrid(3, 2, 2, 8, 4, 1.5)
    x = torch.rand(5, 3)
    values = torch.zeros(5, 4, requires_grad=True)
    grid.attach_gradient(x, values).mul(3.0).sum().backward()
    torch.testing.assert_close(values.grad, torch.full((5, 4), 3.0))
    frozen = HashGrid(3, 2, 2, 8, 4, 1.5).requires_grad_(False)
    plain = torch.zeros(5, 4)
    assert frozen.attach_gradient(x, plain) is plain  # nothing to attach
    with torch.no_grad():
        assert grid.attach_gradient(x, plain) is plain
    with pytest.raises(ValueError, match=r"expected \[5, 4\]"):
        grid.attach_gradient(x, torch.zeros(5, 3))
    with pytest.raises(ValueError, match="requires a gradient"):
        grid.attach_gradient(x.clone().requires_grad_(True), plain)


# ----------------------------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------------------------


def test_auto_uses_torch_on_cpu():
    grid = HashGrid(3, 2, 2, 8, 4, 1.5, implementation="auto")
    assert not grid.uses_tcnn(torch.rand(4, 3))
    with pytest.raises(ValueError, match="implementation"):
        HashGrid(3, implementation="cuda")


@pytest.mark.skipif(tcnn_module() is not None, reason="tinycudann is installed; the missing-tcnn error cannot occur")
def test_tcnn_requested_without_tcnn_raises():
    with pytest.raises(RuntimeError, match="tinycudann"):
        HashGrid(3, 2, 2, 8, 4, 1.5, implementation="tcnn")


@pytest.mark.skipif(
    tcnn_module() is None or not torch.cuda.is_available(),
    reason="needs tinycudann and a CUDA device to compare the tcnn fast path with the torch path",
)
@pytest.mark.parametrize("d", [3, 4])
def test_tcnn_matches_torch(d):
    torch.manual_seed(0)
    ref = HashGrid(d, 16, 2, 19, 16, SCALE_4DFY, implementation="torch").cuda()
    fast = HashGrid(d, 16, 2, 19, 16, SCALE_4DFY, implementation="tcnn").cuda()
    fast.params.data.copy_(ref.params.data.uniform_(-1.0, 1.0))
    x = torch.rand(4096, d, device="cuda")
    x_ref, x_fast = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_ref, y_fast = ref(x_ref), fast(x_fast)
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-4, atol=1e-4)
    w = torch.randn_like(y_ref)
    (y_ref * w).sum().backward()
    (y_fast * w).sum().backward()
    torch.testing.assert_close(fast.params.grad, ref.params.grad, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(x_fast.grad, x_ref.grad, rtol=1e-3, atol=1e-2)


def test_vector_atomics_only_for_two_features_on_cuda(monkeypatch):
    from fourdfy.field_components import hash_grid_triton as ht

    cpu = torch.device("cpu")
    assert not ht.uses_vector_atomics(2, cpu)
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        assert not ht.uses_vector_atomics(4, cuda)  # a row of 4 features is not one 8-byte vector
        monkeypatch.setattr(ht, "VECTOR_ATOMICS", False)
        assert not ht.uses_vector_atomics(2, cuda)
        monkeypatch.setattr(ht, "VECTOR_ATOMICS", True)
        monkeypatch.setenv("TRITON_INTERPRET", "1")  # the CPU interpreter has no inline PTX
        assert not ht.uses_vector_atomics(2, cuda)
