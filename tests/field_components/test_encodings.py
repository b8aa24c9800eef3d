"""Encodings: spherical harmonics, the 4D-fy space-time grids, wrappers, key paths and the MLP."""

import math

import pytest
import torch
from torch import nn

from fourdfy.field_components.encodings import (
    CompositeEncoding,
    GridEncoding,
    HashGridSpatialTime,
    HashGridSpatialTimeDeform,
    SphericalHarmonics,
    get_encoding,
)
from fourdfy.field_components.hash_grid import HashGrid
from fourdfy.field_components.networks import VanillaMLP, get_mlp

PI = math.pi

# Small grids keep the tests fast; key names do not depend on sizes.
SMALL_GRID = {"n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 10, "base_resolution": 4, "per_level_scale": 1.5}
SMALL_TIME = {
    "otype": "Grid",
    "type": "Hash",
    "n_levels": 3,
    "n_features_per_level": 2,
    "log2_hashmap_size": 10,
    "base_resolution": 4,
    "per_level_scale": 1.447269237440378,
    "start_level": 4,
    "start_step": 0,
    "update_steps": 500,
}
SMALL_NET = {"otype": "VanillaMLP", "n_neurons": 16, "n_hidden_layers": 2}


def spacetime_cfg(static: bool) -> dict:
    return {"otype": "HashGridSpatialTime", **SMALL_GRID, "static": static, "num_frames": 16}


def deform_cfg(static: bool) -> dict:
    return {
        "otype": "HashGridSpatialTimeDeform",
        **SMALL_GRID,
        "static": static,
        "time_encoding_config": dict(SMALL_TIME),
        "time_network_config": dict(SMALL_NET),
    }


def randomise(module: nn.Module) -> None:
    """Replace the 1e-4 grid init by O(1) values so that effects are visible."""
    for m in module.modules():
        if isinstance(m, HashGrid):
            m.params.data.uniform_(-1.0, 1.0)


# ----------------------------------------------------------------------------------------------------------------
# Spherical harmonics
# ----------------------------------------------------------------------------------------------------------------


def closed_form_sh(d: torch.Tensor) -> torch.Tensor:
    """Real SH for l <= 3 plus three l = 4 functions, written out (tcnn's sign convention)."""
    x, y, z = d.unbind(-1)
    c1 = math.sqrt(3 / (4 * PI))
    c2 = math.sqrt(15 / PI)
    return torch.stack(
        [
            torch.full_like(x, 0.5 / math.sqrt(PI)),
            -c1 * y,
            c1 * z,
            -c1 * x,
            0.5 * c2 * x * y,
            -0.5 * c2 * y * z,
            0.25 * math.sqrt(5 / PI) * (3 * z**2 - 1),
            -0.5 * c2 * x * z,
            0.25 * c2 * (x**2 - y**2),
            -0.25 * math.sqrt(35 / (2 * PI)) * y * (3 * x**2 - y**2),
            0.5 * math.sqrt(105 / PI) * x * y * z,
            -0.25 * math.sqrt(21 / (2 * PI)) * y * (5 * z**2 - 1),
            0.25 * math.sqrt(7 / PI) * z * (5 * z**2 - 3),
            -0.25 * math.sqrt(21 / (2 * PI)) * x * (5 * z**2 - 1),
            0.25 * math.sqrt(105 / PI) * z * (x**2 - y**2),
            -0.25 * math.sqrt(35 / (2 * PI)) * x * (x**2 - 3 * y**2),
        ],
        dim=-1,
    ), {
        16: 0.75 * math.sqrt(35 / PI) * x * y * (x**2 - y**2),  # l=4, m=-4
        20: 3 / (16 * math.sqrt(PI)) * (35 * z**4 - 30 * z**2 + 3),  # l=4, m=0
        24: 3 / 16 * math.sqrt(35 / PI) * (x**4 - 6 * x**2 * y**2 + y**4),  # l=4, m=4
    }


def test_spherical_harmonics_closed_form():
    dirs = torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [0.6, -0.48, 0.64], [-0.2, 0.4, 0.8]], dtype=torch.float64
    )
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    sh = SphericalHarmonics(5)
    out = sh((dirs + 1) / 2)  # the caller maps directions to [0, 1]
    assert out.shape == (5, 25) and sh.n_output_dims == 25
    low, l4 = closed_form_sh(dirs)
    torch.testing.assert_close(out[:, :16], low, rtol=0, atol=1e-12)
    for idx, ref in l4.items():
        torch.testing.assert_close(out[:, idx], ref, rtol=0, atol=1e-12)
    # Orthonormality on the sphere makes sum_m Y_lm^2 = (2l + 1) / (4 pi) for every direction.
    for l in range(5):
        band = out[:, l * l : (l + 1) * (l + 1)].square().sum(-1)
        torch.testing.assert_close(band, torch.full_like(band, (2 * l + 1) / (4 * PI)), rtol=0, atol=1e-12)


def test_spherical_harmonics_degree3_background_and_float32():
    sh = get_encoding(3, {"otype": "SphericalHarmonics", "degree": 3}, "system.background.dir_encoding_config")
    assert isinstance(sh, SphericalHarmonics) and sh.n_output_dims == 9
    d = torch.nn.functional.normalize(torch.randn(32, 3), dim=-1)
    out = sh((d + 1) / 2)
    assert out.dtype == torch.float32 and out.shape == (32, 9)
    torch.testing.assert_close(out, closed_form_sh(d.double())[0][:, :9].float(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="degree"):
        SphericalHarmonics(9)


# ----------------------------------------------------------------------------------------------------------------
# HashGridSpatialTime
# ----------------------------------------------------------------------------------------------------------------


def test_spacetime_static_ignores_time_and_freezes_4d():
    enc = HashGridSpatialTime(3, spacetime_cfg(static=True))
    randomise(enc)
    assert not enc.encoding_time.params.requires_grad and enc.encoding.params.requires_grad
    assert list(enc.temporal_parameters()) == [enc.encoding_time.params]
    x = torch.rand(20, 3)
    a, dx = enc(x, torch.full((20, 1), 0.3))
    b, _ = enc(x, torch.full((20, 1), 0.9))
    c, _ = enc(x, None)
    assert dx is None and a.shape == (20, enc.n_output_dims) == (20, 8)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c, rtol=0, atol=0)
    # Static means t = 0, and the frozen 4-D grid still adds in (as in 4D-fy).
    expected = enc.encoding(x) + enc.encoding_time(torch.cat([x, torch.zeros(20, 1)], dim=-1))
    torch.testing.assert_close(a, expected, rtol=0, atol=0)


def test_spacetime_dynamic_depends_on_time_and_trains_both_grids():
    enc = HashGridSpatialTime(3, spacetime_cfg(static=False))
    randomise(enc)
    assert enc.encoding_time.params.requires_grad
    x = torch.rand(20, 3)
    a, _ = enc(x, torch.full((20, 1), 0.3))
    b, _ = enc(x, torch.full((20, 1), 0.7))
    assert (a - b).abs().max() > 1e-3
    # One time for all points ([1, 1]) broadcasts like a per-point column.
    c, _ = enc(x, torch.tensor([[0.3]]))
    torch.testing.assert_close(a, c, rtol=0, atol=0)
    a.square().sum().backward()
    assert enc.encoding.params.grad.abs().sum() > 0 and enc.encoding_time.params.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="times"):
        enc(x, None)


def test_spacetime_set_temporal_requires_grad():
    enc = HashGridSpatialTime(3, spacetime_cfg(static=True))
    enc.set_temporal_requires_grad(True)
    assert enc.encoding_time.params.requires_grad and enc.encoding.params.requires_grad


# ----------------------------------------------------------------------------------------------------------------
# HashGridSpatialTimeDeform
# ----------------------------------------------------------------------------------------------------------------


def test_deform_static_has_no_dx():
    enc = HashGridSpatialTimeDeform(3, deform_cfg(static=True))
    randomise(enc)
    x = torch.rand(10, 3)
    out, dx = enc(x, torch.full((10, 1), 0.5))
    assert dx is None
    torch.testing.assert_close(out, enc.encoding(x), rtol=0, atol=0)
    assert not any(p.requires_grad for p in enc.temporal_parameters())
    assert enc.encoding.params.requires_grad


def test_deform_dynamic_gradients_reach_time_network_and_4d_grid():
    torch.manual_seed(0)
    enc = HashGridSpatialTimeDeform(3, deform_cfg(static=False))
    randomise(enc)
    x = torch.rand(32, 3)
    out, dx = enc(x, torch.full((32, 1), 0.25))
    assert dx.shape == (32, 3) and out.shape == (32, 8)
    torch.testing.assert_close(out, enc.encoding(x + dx), rtol=0, atol=0)
    (out.square().sum() + dx.square().sum()).backward()
    grid4 = enc.encoding_time.encoding.encoding
    assert grid4.params.grad is not None and grid4.params.grad.abs().sum() > 0
    for layer in (0, 2, 4):
        assert enc.time_network.layers[layer].weight.grad.abs().sum() > 0
    # 4D-fy's set_temp_param_grad(True) in a dynamic stage freezes the canonical grid.
    enc.set_temporal_requires_grad(True)
    assert not enc.encoding.params.requires_grad and grid4.params.requires_grad


def test_deform_time_changes_dx():
    torch.manual_seed(1)
    enc = HashGridSpatialTimeDeform(3, deform_cfg(static=False))
    randomise(enc)
    x = torch.rand(16, 3)
    _, dx0 = enc(x, torch.zeros(16, 1))
    _, dx1 = enc(x, torch.ones(16, 1))
    assert (dx0 - dx1).abs().max() > 1e-4


# ----------------------------------------------------------------------------------------------------------------
# Key paths (reference §6.2 / §6.3)
# ----------------------------------------------------------------------------------------------------------------


def _as_geometry(encoding: nn.Module) -> nn.Module:
    root = nn.Module()
    root.geometry = nn.Module()
    root.geometry.encoding = CompositeEncoding(encoding)
    return root


def test_state_dict_keys_spacetime_4dfy_config():
    cfg = {"otype": "HashGridSpatialTime", "n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 19,
           "base_resolution": 16, "per_level_scale": 1.447269237440378, "static": True}
    wrapped = CompositeEncoding(get_encoding(3, cfg, "system.geometry.pos_encoding_config"))
    sd = wrapped.state_dict()
    assert set(sd) == {"encoding.encoding.params", "encoding.encoding_time.params"}
    assert sd["encoding.encoding.params"].shape == (12_599_920,)
    assert sd["encoding.encoding_time.params"].shape == (15_474_688,)
    assert wrapped.n_output_dims == 32


def test_state_dict_keys_deform():
    root = _as_geometry(get_encoding(3, deform_cfg(static=True), "system.geometry.pos_encoding_config"))
    keys = set(root.state_dict())
    assert keys == {
        "geometry.encoding.encoding.encoding.params",
        "geometry.encoding.encoding.encoding_time.encoding.encoding.params",
        "geometry.encoding.encoding.time_network.layers.0.weight",
        "geometry.encoding.encoding.time_network.layers.2.weight",
        "geometry.encoding.encoding.time_network.layers.4.weight",
    }
    sd = root.state_dict()
    assert sd["geometry.encoding.encoding.time_network.layers.0.weight"].shape == (16, 6)  # 3 levels x F=2 -> 16
    assert sd["geometry.encoding.encoding.time_network.layers.4.weight"].shape == (3, 16)


def test_deform_4dfy_time_network_shapes():
    cfg = deform_cfg(static=True)
    cfg["time_encoding_config"].update(n_levels=8, log2_hashmap_size=12)
    cfg["time_network_config"] = {"otype": "VanillaMLP", "n_neurons": 64, "n_hidden_layers": 2}
    enc = get_encoding(3, cfg, "pos")
    shapes = {k: tuple(v.shape) for k, v in enc.time_network.state_dict().items()}
    assert shapes == {"layers.0.weight": (64, 16), "layers.2.weight": (64, 64), "layers.4.weight": (3, 64)}


def test_optimizer_paths_exist():
    geo = _as_geometry(get_encoding(3, spacetime_cfg(static=False), "pos")).geometry
    assert isinstance(geo.encoding.encoding.encoding, HashGrid)
    assert isinstance(geo.encoding.encoding.encoding_time, HashGrid)
    deform = _as_geometry(get_encoding(3, deform_cfg(static=False), "pos")).geometry
    assert isinstance(deform.encoding.encoding.encoding_time, CompositeEncoding)
    assert isinstance(deform.encoding.encoding.time_network, VanillaMLP)


# ----------------------------------------------------------------------------------------------------------------
# Wrappers and factory
# ----------------------------------------------------------------------------------------------------------------


def test_composite_include_xyz_and_tuple_passthrough():
    grid = get_encoding(3, {"otype": "HashGrid", **SMALL_GRID}, "enc")
    assert isinstance(grid, GridEncoding) and list(grid.state_dict()) == ["encoding.params"]
    comp = CompositeEncoding(grid, include_xyz=True)
    x = torch.rand(5, 3)
    out = comp(x)
    assert comp.n_output_dims == 11 and out.shape == (5, 11)
    torch.testing.assert_close(out[:, :3], 2 * x - 1)
    st = CompositeEncoding(HashGridSpatialTime(3, spacetime_cfg(static=False)), include_xyz=True)
    enc, dx = st(x, torch.zeros(5, 1))
    assert enc.shape == (5, 11) and dx is None


def test_get_encoding_grid_uses_type():
    dense = get_encoding(3, {"otype": "Grid", "type": "Dense", **SMALL_GRID}, "enc")
    assert not any(lv.hashed for lv in dense.encoding.layout.levels)


# ----------------------------------------------------------------------------------------------------------------
# VanillaMLP
# ----------------------------------------------------------------------------------------------------------------


def test_vanilla_mlp_layout_and_keys():
    density = get_mlp(32, 1, {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none",
                              "n_neurons": 64, "n_hidden_layers": 1}, "system.geometry.mlp_network_config")
    assert {k: tuple(v.shape) for k, v in density.state_dict().items()} == {
        "layers.0.weight": (64, 32),
        "layers.2.weight": (1, 64),
    }
    bg = get_mlp(9, 3, {"otype": "VanillaMLP", "activation": "ReLU", "n_neurons": 16, "n_hidden_layers": 2}, "bg")
    assert [k for k in bg.state_dict()] == ["layers.0.weight", "layers.2.weight", "layers.4.weight"]
    assert bg.layers[1].name == "relu" and bg.layers[3].name == "relu"
    x = torch.randn(5, 9)
    torch.testing.assert_close(bg.layers[1](x), torch.relu(x))


def test_vanilla_mlp_math_and_bias_option():
    mlp = VanillaMLP(4, 2, n_neurons=8, n_hidden_layers=1, output_activation="Sigmoid")
    x = torch.randn(6, 4)
    expected = torch.sigmoid(torch.relu(x @ mlp.layers[0].weight.T) @ mlp.layers[2].weight.T)
    torch.testing.assert_close(mlp(x), expected)
    with_bias = VanillaMLP(4, 2, n_neurons=8, n_hidden_layers=1, bias=True)
    assert "layers.0.bias" in with_bias.state_dict()


def test_vanilla_mlp_runs_fp32_under_autocast():
    mlp = VanillaMLP(4, 3, n_neurons=8, n_hidden_layers=2)
    x = torch.randn(5, 4)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = mlp(x.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, mlp(x.bfloat16().float()))
