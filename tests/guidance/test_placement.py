"""Model placement: a guidance with ``device`` set stays on its own device when the system moves."""

import sys
from pathlib import Path

import torch
from torch import nn

import launch
from fourdfy.guidance.multiview_diffusion_guidance import MultiviewDiffusionGuidance

ROOT = Path(__file__).resolve().parents[2]


def test_guidance_with_placement_ignores_the_system_move():
    placed = MultiviewDiffusionGuidance({"model_name": "tiny-random-4view", "device": "cpu"})
    free = MultiviewDiffusionGuidance({"model_name": "tiny-random-4view"})
    system = nn.ModuleDict({"field": nn.Linear(3, 3), "placed": placed, "free": free})
    system.to("meta")  # stands in for the training GPU
    assert system["field"].weight.device.type == "meta"
    assert next(free.unet.parameters()).device.type == "meta"
    assert {p.device.type for p in placed.parameters()} == {"cpu"}
    assert {b.device.type for b in placed.buffers()} == {"cpu"}
    assert placed.placement == torch.device("cpu") and free.placement is None


def test_placement_and_data_parallel_are_refused(tmp_path, capsys):
    rc = launch.main([
        "--config", str(ROOT / "configs" / "smoke" / "fourdfy_stage_1_tiny.yaml"), "--train", "--gpu", "0,1",
        "system.prompt_processor.prompt=a cat", "system.guidance_multi_view.device=cuda:1", f"exp_root_dir={tmp_path}",
    ])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert "system.guidance_multi_view.device" in err and "cannot be combined" in err
