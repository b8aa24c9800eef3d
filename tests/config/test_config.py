"""Strict config parsing: typos, wrong types, missing values, unknown/mistyped module names, overrides."""

import dataclasses
from pathlib import Path
from typing import Optional, Union

import pytest

from fourdfy.config import ConfigError, Scheduled, parse_config, ranged
from fourdfy.experiment import load_config, load_yaml_tree, merge_trees

ROOT = Path(__file__).resolve().parents[2]
STAGE1 = str(ROOT / "configs" / "fourdfy_stage_1.yaml")
TINY1 = str(ROOT / "configs" / "smoke" / "fourdfy_stage_1_tiny.yaml")
PROMPT = "system.prompt_processor.prompt=a panda dancing"


@dataclasses.dataclass
class Inner:
    radius: float = 1.0
    steps: int = 3
    name: Optional[str] = None


@dataclasses.dataclass
class Outer:
    inner: Inner = dataclasses.field(default_factory=Inner)
    pair: tuple[float, float] = (0.0, 1.0)
    weight: Scheduled = 1.0
    required: str = dataclasses.field(default=dataclasses.MISSING, kw_only=True)


def test_parse_ok_and_types_converted():
    cfg = parse_config(Outer, {"inner": {"radius": 2, "steps": 4.0}, "pair": [1, 2], "required": "x"}, "sys")
    assert cfg.inner.radius == 2.0 and isinstance(cfg.inner.radius, float)
    assert cfg.inner.steps == 4 and isinstance(cfg.inner.steps, int)
    assert cfg.pair == (1.0, 2.0)


def test_typo_names_path_and_suggestion():
    with pytest.raises(ConfigError) as e:
        parse_config(Outer, {"inner": {"raduis": 2}, "required": "x"}, "system.geometry")
    msg = str(e.value)
    assert "system.geometry.inner.raduis" in msg and "Did you mean 'radius'" in msg


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"inner": {"radius": "big"}, "required": "x"}, "sys.inner.radius: expected a number"),
        ({"inner": {"steps": 2.5}, "required": "x"}, "sys.inner.steps: expected an int"),
        ({"pair": [1, 2, 3], "required": "x"}, "sys.pair: expected a list of 2 values"),
        ({"weight": [1, 2], "required": "x"}, "sys.weight: expected a number or a list"),
        ({"weight": True, "required": "x"}, "sys.weight"),
        ({}, "sys.required: missing value"),
        ({"required": "???"}, "sys.required: missing mandatory value"),
    ],
)
def test_bad_values_fail_with_path(data, fragment):
    with pytest.raises(ConfigError) as e:
        parse_config(Outer, data, "sys")
    assert fragment in str(e.value)


def test_every_error_is_reported_at_once():
    with pytest.raises(ConfigError) as e:
        parse_config(Outer, {"inner": {"raduis": 2, "steps": "x"}, "pair": [1], "bogus": 1}, "sys")
    assert [m.split(":")[0] for m in e.value.errors] == [
        "sys.bogus", "sys.inner.raduis", "sys.inner.steps", "sys.pair", "sys.required",
    ]  # fmt: skip
    assert "Did you mean 'radius'" in e.value.errors[1]
    assert str(e.value).splitlines()[0] == "5 errors in the config:" and len(str(e.value).splitlines()) == 6


@dataclasses.dataclass
class Sized:
    n: int = ranged(1, ge=1)
    sizes: Union[int, list[int]] = ranged(8, ge=1)
    p: float = ranged(0.5, ge=0, le=1)
    step: Optional[float] = ranged(None, gt=0)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"n": 0}, "s.n: must be >= 1, got 0"),
        ({"sizes": -32}, "s.sizes: must be >= 1, got -32"),
        ({"sizes": [8, 0]}, "s.sizes: must be >= 1, got 0 (in [8, 0])"),
        ({"p": 1.5}, "s.p: must be >= 0 and <= 1, got 1.5"),
        ({"step": 0}, "s.step: must be > 0, got 0.0"),
    ],
)
def test_ranges_are_checked(data, message):
    with pytest.raises(ConfigError) as e:
        parse_config(Sized, data, "s")
    assert str(e.value) == message
    assert parse_config(Sized, {"n": 3, "sizes": [1, 2], "p": 0, "step": None}, "s").sizes == [1, 2]


def test_degenerate_sizes_in_4dfy_configs_fail_at_parse_time():
    with pytest.raises(ConfigError) as e:
        load_config([TINY1], [PROMPT, "data.multi_view.batch_size=0", "data.single_view.width=[64, 0]",
                              "system.renderer.num_samples_per_ray=0", "data.multi_view.n_view=0"])  # fmt: skip
    assert set(e.value.errors) == {
        "data.multi_view.batch_size: must be >= 1, got 0",
        "data.single_view.width: must be >= 1, got 0 (in [64, 0])",
        "system.renderer.num_samples_per_ray: must be >= 1, got 0",
        "data.multi_view.n_view: must be >= 1, got 0",
    }


def test_scheduled_accepts_scalar_and_lists():
    assert parse_config(Outer, {"weight": [0, 1.0, 2.0, 100], "required": "x"}).weight == [0, 1.0, 2.0, 100]
    assert parse_config(Outer, {"weight": [1.0, 2.0, 100], "required": "x"}).weight == [1.0, 2.0, 100]


def test_stage1_typo_anywhere_fails_before_building(capsys):
    with pytest.raises(ConfigError) as e:
        load_config([TINY1], [PROMPT, "system.geometry.raduis=1.0"])
    assert "system.geometry.raduis" in str(e.value) and "Did you mean 'radius'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config([TINY1], [PROMPT, "system.renderer.num_samples_per_ray=many"])
    assert "system.renderer.num_samples_per_ray: expected an int" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config([TINY1], [PROMPT, "system.geometry.pos_encoding_config.n_level=3"])
    assert "n_level" in str(e.value) and "n_levels" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config([TINY1], [PROMPT, "trainer.max_step=3"])
    assert "trainer.max_step" in str(e.value) and "max_steps" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config([TINY1], [PROMPT, "system.optimizer.args.betta=[0.9,0.9]"])
    assert "system.optimizer.args.betta" in str(e.value) and "betas" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config([TINY1], [PROMPT, "system.optimizer.params.backgroud.lr=0.1"])
    assert "backgroud" in str(e.value) and "background" in str(e.value)


def test_unknown_type_name_and_wrong_kind():
    with pytest.raises(ConfigError) as e:
        load_config([TINY1], [PROMPT, "system.geometry_type=implicit-volum"])
    assert "system.geometry: unknown geometry type 'implicit-volum'" in str(e.value)
    assert "Did you mean 'implicit-volume'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config([TINY1], [PROMPT, "system.renderer_type=implicit-volume"])
    assert "is a geometry, but this slot needs a renderer" in str(e.value)


def test_missing_prompt_names_the_key():
    with pytest.raises(ConfigError) as e:
        load_config([TINY1], [])
    assert "system.prompt_processor.prompt" in str(e.value)


def test_overrides_propagate_through_interpolations_and_brackets():
    cfg, raw = load_config(
        [TINY1],
        [PROMPT, "data.prob_multi_view=0.25", "system.optimizer.params[geometry.encoding].lr=0.5", "seed=7"],
    )
    assert cfg.seed == 7
    assert raw["system"]["prob_multi_view"] == 0.25  # ${data.prob_multi_view}
    assert raw["system"]["optimizer"]["params"]["geometry.encoding"]["lr"] == 0.5
    assert cfg.trial_dir.endswith(cfg.trial_name) and cfg.trial_name.startswith("a_panda_dancing@")
    assert "fourdfy_stage_1_tiny" in cfg.trial_dir


def test_parsed_yaml_round_trip_keeps_trial_dir(tmp_path):
    from fourdfy.experiment import dump_yaml

    cfg, raw = load_config([TINY1], [PROMPT])
    dump_yaml(raw, tmp_path / "parsed.yaml")
    cfg2, _ = load_config([str(tmp_path / "parsed.yaml")], [])
    assert cfg2.trial_dir == cfg.trial_dir and cfg2.timestamp == cfg.timestamp


def test_every_config_file_parses():
    files = sorted((ROOT / "configs").rglob("*.yaml"))
    names = {f.name for f in files}
    for expected in (
        "fourdfy_stage_1.yaml", "fourdfy_stage_1_low_vram.yaml", "fourdfy_stage_1_low_vram_deformation.yaml",
        "fourdfy_stage_2.yaml", "fourdfy_stage_2_low_vram.yaml", "fourdfy_stage_2_low_vram_deformation.yaml",
    ):  # fmt: skip
        assert expected in names
    parsed = 0
    for f in files:
        tree = load_yaml_tree(f)
        if "system_type" not in tree:
            continue  # overlays hold fragments only
        cfg, raw = load_config([str(f)], [PROMPT])
        assert cfg.system_type == "fourdfy-system" and cfg.name == raw["name"]
        parsed += 1
    assert parsed >= 8


def test_low_vram_variant_replaces_renderer():
    _, raw = load_config([str(ROOT / "configs" / "fourdfy_stage_1_low_vram.yaml")], [PROMPT])
    r = raw["system"]["renderer"]
    assert raw["system"]["renderer_type"] == "stable-nerf-volume-renderer"
    assert set(r) == {"base_renderer_type", "base_renderer"}
    assert r["base_renderer"]["train_max_nums"] == 2000000
    assert raw["name"] == "fourdfy_stage_1_low_vram"


def test_merge_trees_replace_marker():
    base = {"a": {"x": 1, "y": 2}, "b": 1}
    assert merge_trees(base, {"a": {"y": 3}}) == {"a": {"x": 1, "y": 3}, "b": 1}
    assert merge_trees(base, {"a": {"_replace_": True, "z": 4}}) == {"a": {"z": 4}, "b": 1}


def test_bad_override_tokens():
    with pytest.raises(ConfigError, match="key=value"):
        load_config([TINY1], [PROMPT, "seed"])
    with pytest.raises(ConfigError, match="unknown command-line flag"):
        load_config([TINY1], [PROMPT, "--foo"])
