"""4D-fy's README tuning overrides keep working on the stage-3 configs (reference §1.6): each parses and lands where
4D-fy's code read it."""

from pathlib import Path

import pytest

from fourdfy.experiment import load_config
from fourdfy.registry import build

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "system.prompt_processor.prompt=a panda dancing"


@pytest.mark.parametrize("config", ["fourdfy_stage_3.yaml", "fourdfy_stage_3_low_vram.yaml"])
@pytest.mark.parametrize("override, path, value", [
    ("data.single_view.width_vid=144", ("data", "single_view", "width_vid"), 144),
    ("data.single_view.height_vid=80", ("data", "single_view", "height_vid"), 80),
    ("trainer.precision=16-mixed", ("trainer", "precision"), "16-mixed"),
    ("system.guidance_video.enable_memory_efficient_attention=true",
     ("system", "guidance_video", "enable_memory_efficient_attention"), True),
    ("data.single_view.num_frames=8", ("system", "geometry", "pos_encoding_config", "num_frames"), 8),
    ("system.geometry.pos_encoding_config.n_levels=8", ("system", "geometry", "pos_encoding_config", "n_levels"), 8),
    ("system.loss.lambda_sds_video=0.3", ("system", "loss", "lambda_sds_video"), 0.3),
    ("data.single_view.prob_single_view_video=1.0", ("system", "prob_single_view_video"), 1.0),
    ("data.prob_multi_view=0.75", ("system", "prob_multi_view"), 0.75),
])  # fmt: skip
def test_readme_override_parses_and_lands(config, override, path, value):
    _, resolved = load_config([str(ROOT / "configs" / config)], [PROMPT, override])
    node = resolved
    for key in path:
        node = node[key]
    assert node == value


def test_low_vram_budget_override_lands():
    _, resolved = load_config([str(ROOT / "configs" / "fourdfy_stage_3_low_vram.yaml")],
                              [PROMPT, "system.renderer.base_renderer.train_max_nums=50000"])  # fmt: skip
    base = resolved["system"]["renderer"]["base_renderer"]
    assert base["train_max_nums"] == 50000 and base["train_max_nums_static"] == 50000  # interpolated, as 4D-fy


def test_eight_frames_reach_the_video_batches():
    cfg, _ = load_config([str(ROOT / "configs" / "smoke" / "fourdfy_stage_3_tiny.yaml")],
                         [PROMPT, "data.single_view.num_frames=8", "data.single_view.prob_single_view_video=1.0",
                          "data.prob_multi_view=0.0"])  # fmt: skip
    dm = build("datamodule", cfg.data_type, cfg.data, "data")
    assert dm.train_stream.sample().times.shape == (1, 8)
