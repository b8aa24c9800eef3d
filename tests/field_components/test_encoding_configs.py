"""Encoding / network configs: every 4D-fy ``pos_encoding_config`` parses; mistakes raise ConfigError with the path."""

import logging

import pytest
from omegaconf import OmegaConf

import fourdfy.field_components.encoding_configs as ec
from fourdfy.config import ConfigError
from fourdfy.field_components.encoding_configs import (
    GridEncodingConfig,
    HashGridSpatialTimeConfig,
    HashGridSpatialTimeDeformConfig,
    SphericalHarmonicsConfig,
    VanillaMLPConfig,
    parse_encoding_config,
    parse_mlp_config,
)
from fourdfy.field_components.encodings import HashGridSpatialTimeDeform, get_encoding
from fourdfy.field_components.networks import get_mlp

POS = "system.geometry.pos_encoding_config"
SCALE = 1.447269237440378

# Reference §3.1-§3.3: the pos_encoding_config block of each 4D-fy config, with its interpolations.
BASE = {
    "otype": "HashGridSpatialTime",
    "n_levels": 16,
    "n_features_per_level": 2,
    "log2_hashmap_size": 19,
    "base_resolution": 16,
    "per_level_scale": SCALE,
    "static": "${data.single_view.static}",
}
DEFORM_KEYS = {
    "otype": "HashGridSpatialTimeDeform",
    "time_encoding_config": {
        "otype": "Grid",
        "type": "Hash",
        "n_levels": 8,
        "n_features_per_level": 2,
        "log2_hashmap_size": 19,
        "base_resolution": 4,
        "per_level_scale": SCALE,
        "start_level": 4,
        "start_step": 0,
        "update_steps": 500,
    },
    "time_network_config": {"otype": "VanillaMLP", "n_neurons": 64, "n_hidden_layers": 2},
}
STAGE3_KEYS = {"num_frames": "${data.single_view.num_frames}"}

CONFIGS = {
    # stages 1-2 (static: true)
    "fourdfy_stage_1": (BASE, True),
    "fourdfy_stage_1_low_vram": (BASE, True),
    "fourdfy_stage_2": (BASE, True),
    "fourdfy_stage_2_low_vram": (BASE, True),
    "fourdfy_stage_1_low_vram_deformation": ({**BASE, **DEFORM_KEYS}, True),
    "fourdfy_stage_2_low_vram_deformation": ({**BASE, **DEFORM_KEYS}, True),
    # stage 3 (static: false, num_frames: 16)
    "fourdfy_stage_3": ({**BASE, **STAGE3_KEYS}, False),
    "fourdfy_stage_3_low_vram": ({**BASE, **STAGE3_KEYS}, False),
    "fourdfy_stage_3_vc": ({**BASE, **STAGE3_KEYS}, False),
    "fourdfy_stage_3_low_vram_vc": ({**BASE, **STAGE3_KEYS}, False),
    "fourdfy_stage_3_vc_deformation": ({**BASE, **STAGE3_KEYS, **DEFORM_KEYS}, False),
    "fourdfy_stage_3_low_vram_vc_deformation": ({**BASE, **STAGE3_KEYS, **DEFORM_KEYS}, False),
}


def resolved_pos_config(block: dict, static: bool):
    """The block inside a full OmegaConf tree, interpolations resolved (as the launcher does)."""
    data = {"single_view": {"static": static}}
    if not static:
        data["single_view"]["num_frames"] = 16
    tree = OmegaConf.create({"data": data, "system": {"geometry": {"pos_encoding_config": block}}})
    OmegaConf.resolve(tree)
    return tree.system.geometry.pos_encoding_config


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_4dfy_pos_encoding_config_parses(name):
    block, static = CONFIGS[name]
    cfg = parse_encoding_config(resolved_pos_config(block, static), POS)
    assert cfg.static is static
    assert (cfg.n_levels, cfg.n_features_per_level, cfg.log2_hashmap_size, cfg.base_resolution) == (16, 2, 19, 16)
    assert cfg.per_level_scale == SCALE
    assert cfg.num_frames == (1 if static else 16)
    if "deformation" in name:
        assert isinstance(cfg, HashGridSpatialTimeDeformConfig)
        t = cfg.time_encoding_config
        assert (t.otype, t.type, t.n_levels, t.base_resolution, t.start_level, t.update_steps) == ("Grid", "Hash", 8, 4, 4, 500)
        assert (cfg.time_network_config.n_neurons, cfg.time_network_config.n_hidden_layers) == (64, 2)
    else:
        assert isinstance(cfg, HashGridSpatialTimeConfig)


def test_full_size_deformation_encoding_builds():
    block, static = CONFIGS["fourdfy_stage_3_vc_deformation"]
    enc = get_encoding(3, resolved_pos_config(block, static), POS)
    assert isinstance(enc, HashGridSpatialTimeDeform) and not enc.static
    assert enc.n_output_dims == 32 and enc.encoding_time.n_output_dims == 16
    assert enc.encoding_time.encoding.encoding.params.numel() == 3_294_432


def test_other_tcnn_dicts_of_the_configs_parse():
    # implicit-volume defaults (reference §3.4) and the background's encoding/MLP.
    grid = parse_encoding_config(
        {"otype": "HashGrid", "n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 19,
         "base_resolution": 16, "per_level_scale": 1.4472692}, POS)
    assert isinstance(grid, GridEncodingConfig) and grid.type == "Hash"
    sh = parse_encoding_config({"otype": "SphericalHarmonics", "degree": 3}, "system.background.dir_encoding_config")
    assert isinstance(sh, SphericalHarmonicsConfig) and sh.degree == 3
    mlp = parse_mlp_config({"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none",
                            "n_neurons": 64, "n_hidden_layers": 1}, "system.geometry.mlp_network_config")
    assert isinstance(mlp, VanillaMLPConfig) and (mlp.n_neurons, mlp.bias) == (64, False)
    bg = parse_mlp_config(OmegaConf.create({"otype": "VanillaMLP", "activation": "ReLU", "n_neurons": 16,
                                            "n_hidden_layers": 2}), "system.background.mlp_network_config")
    assert bg.output_activation == "none"


def test_tcnn_defaults_for_absent_keys():
    cfg = parse_encoding_config({"otype": "Grid"}, "enc")
    assert (cfg.n_levels, cfg.n_features_per_level, cfg.log2_hashmap_size, cfg.base_resolution, cfg.per_level_scale) == (
        16, 2, 19, 16, 2.0)
    assert cfg.implementation == "auto"
    assert parse_encoding_config({"otype": "SphericalHarmonics"}, "enc").degree == 4


# ----------------------------------------------------------------------------------------------------------------
# Errors name the dotted path
# ----------------------------------------------------------------------------------------------------------------


def _stage3_deform() -> dict:
    block, static = CONFIGS["fourdfy_stage_3_vc_deformation"]
    return OmegaConf.to_container(resolved_pos_config(block, static))


def test_typo_key_raises_with_path_and_suggestion():
    raw = _stage3_deform()
    raw["n_level"] = raw.pop("n_levels")
    with pytest.raises(ConfigError, match=r"system\.geometry\.pos_encoding_config\.n_level: unknown key.*'n_levels'"):
        parse_encoding_config(raw, POS)


def test_nested_typo_raises_with_full_path():
    raw = _stage3_deform()
    raw["time_encoding_config"]["log2_hashmap_sise"] = 19
    with pytest.raises(ConfigError, match=r"pos_encoding_config\.time_encoding_config\.log2_hashmap_sise.*'log2_hashmap_size'"):
        parse_encoding_config(raw, POS)
    raw = _stage3_deform()
    raw["time_network_config"]["n_neuron"] = raw["time_network_config"].pop("n_neurons")
    with pytest.raises(ConfigError, match=r"time_network_config\.n_neuron"):
        parse_encoding_config(raw, POS)


def test_unknown_otype_raises():
    with pytest.raises(ConfigError, match=r"pos_encoding_config\.otype: unknown encoding type 'HashGridSpaceTime'.*'HashGridSpatialTime'"):
        parse_encoding_config({**BASE, "otype": "HashGridSpaceTime", "static": True}, POS)
    raw = _stage3_deform()
    raw["time_encoding_config"]["otype"] = "ProgressiveBandHashGrid"
    with pytest.raises(ConfigError, match=r"time_encoding_config\.otype"):
        parse_encoding_config(raw, POS)
    with pytest.raises(ConfigError, match=r"otype: missing"):
        parse_encoding_config({"n_levels": 16}, POS)
    with pytest.raises(ConfigError, match=r"mlp\.otype: unknown network type 'FullyFusedMLP'"):
        get_mlp(3, 3, {"otype": "FullyFusedMLP", "n_neurons": 64, "n_hidden_layers": 1}, "mlp")


@pytest.mark.parametrize(
    "key,value,pattern",
    [
        ("n_levels", "16", r"\.n_levels: expected an int"),
        ("static", "yes", r"\.static: expected a bool"),
        ("per_level_scale", [1.4], r"\.per_level_scale: expected a number"),
        ("n_features_per_level", 3, r"n_features_per_level must be 1, 2, 4 or 8"),
        ("implementation", "cuda", r"\.implementation: 'cuda' is not one of"),
        ("n_levels", 0, r"n_levels must be positive"),
    ],
)
def test_wrong_values_raise(key, value, pattern):
    raw = {**BASE, "static": True, key: value}
    with pytest.raises(ConfigError, match=pattern) as info:
        parse_encoding_config(raw, POS)
    assert POS in str(info.value)


def test_deform_requires_time_configs():
    raw = _stage3_deform()
    del raw["time_network_config"]
    with pytest.raises(ConfigError, match=r"time_network_config: missing value"):
        parse_encoding_config(raw, POS)


def test_bad_activation_raises():
    with pytest.raises(ConfigError, match=r"mlp.activation: unknown activation 'Relu6'"):
        parse_mlp_config({"otype": "VanillaMLP", "n_neurons": 8, "n_hidden_layers": 1, "activation": "Relu6"}, "mlp")


def test_inert_grid_keys_accepted_and_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(ec, "_logged_inert", set())
    raw = dict(DEFORM_KEYS["time_encoding_config"])
    with caplog.at_level(logging.INFO, logger="fourdfy.field_components.encoding_configs"):
        a = parse_encoding_config(raw, "t")
        parse_encoding_config(raw, "t")
    assert (a.start_level, a.start_step, a.update_steps) == (4, 0, 500)
    msgs = [r.getMessage() for r in caplog.records if "no effect" in r.getMessage()]
    assert len(msgs) == 1 and "start_level" in msgs[0]
