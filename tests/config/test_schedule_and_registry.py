"""Scheduled values (4D-fy's C()) and the registry."""

import pytest
from torch import nn

from fourdfy.config import ConfigError
from fourdfy.registry import find, register, registered_names
from fourdfy.schedule import scheduled_value


@pytest.mark.parametrize(
    "value, step, expected",
    [
        (0.5, 123, 0.5),
        ([0, 0.98, 0.5, 8000], 0, 0.98),
        ([0, 0.98, 0.5, 8000], 4000, 0.74),
        ([0, 0.98, 0.5, 8000], 8000, 0.5),
        ([0, 0.98, 0.5, 8000], 20000, 0.5),
        ([10000, 0.0, 1000.0, 10001], 9999, 0.0),
        ([10000, 0.0, 1000.0, 10001], 10000, 0.0),
        ([10000, 0.0, 1000.0, 10001], 10001, 1000.0),
        ([1.0, 3.0, 100], 50, 2.0),  # 3-list: start_step 0
    ],
)
def test_scheduled_value_steps(value, step, expected):
    assert scheduled_value(value, epoch=0, global_step=step) == pytest.approx(expected)


def test_float_end_step_counts_epochs():
    assert scheduled_value([0, 1.0, 3.0, 2.0], epoch=1, global_step=10**6) == pytest.approx(2.0)


def test_registry_kinds_and_duplicates():
    names = registered_names("renderer")
    assert {"nerf-volume-renderer", "stable-nerf-volume-renderer", "mask-nerf-volume-renderer"} <= set(names)
    for name, kind in [
        ("single-multiview-combined-camera-datamodule", "datamodule"), ("fourdfy-system", "system"),
        ("implicit-volume", "geometry"), ("no-material", "material"),
        ("neural-environment-map-background", "background"), ("stable-diffusion-prompt-processor", "prompt_processor"),
        ("multiview-diffusion-guidance", "guidance"), ("zeroscope-prompt-processor", "prompt_processor"),
        ("zeroscope-guidance", "guidance"), ("videocrafter-guidance", "guidance"),
        ("videocrafter-prompt-processor", "prompt_processor"), ("stable-diffusion-vsd-guidance", "guidance"),
    ]:  # fmt: skip
        assert find(name, kind, "x").kind == kind
    # stage 3's video types validate 4D-fy's keys (the LVDM `config` must name VideoCrafter2's yaml)
    from fourdfy.config import parse_config

    vc = find("videocrafter-guidance", "guidance", "x")
    parse_config(vc.Config, {"motion_amp_scale": 30.0, "fps": 8, "config": "configs/inference_t2v_512_v2.0.yaml"})
    with pytest.raises(ConfigError, match="motion_amp_scal"):
        parse_config(vc.Config, {"motion_amp_scal": 30.0}, "system.guidance_video")
    with pytest.raises(ConfigError, match="is a geometry, but this slot needs a renderer"):
        find("implicit-volume", "renderer", "system.renderer_type")

    class Dummy(nn.Module):
        kind = "geometry"

        class Config:
            pass

    with pytest.raises(ValueError, match="already taken"):
        register("implicit-volume")(Dummy)
