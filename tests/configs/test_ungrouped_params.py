"""Trainable parameters in no optimizer group are frozen with one warning, as 4D-fy leaves them untrained; the
``system.optimizer.ungrouped_params: error`` key refuses them instead (issue 11, item 3)."""

import logging

import pytest
import torch
from torch import nn

from fourdfy.config import ConfigError, parse_config
from fourdfy.systems.optim import OptimizerConfig, build_optimizer


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.geometry = nn.Linear(3, 4)
        self.guidance_single_view = nn.Module()
        self.guidance_single_view.lora_layers = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
        self.guidance_single_view.camera_embedding = nn.Linear(16, 8)
        self.pretrained = nn.Linear(5, 5).requires_grad_(False)  # already frozen: not an orphan


def config(**kw) -> OptimizerConfig:
    return parse_config(OptimizerConfig, {"name": "AdamW", "params": {"geometry": {"lr": 0.01}}, **kw}, "system.optimizer")


def test_orphans_are_frozen_and_named_in_one_warning(caplog):
    toy = Toy()
    with caplog.at_level(logging.WARNING, logger="fourdfy.systems.optim"):
        opt = build_optimizer(toy, config())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0]
    assert "guidance_single_view.lora_layers (4 tensors, 12 values)" in msg
    assert "guidance_single_view.camera_embedding (2 tensors, 136 values)" in msg
    assert "geometry" not in msg and "pretrained" not in msg  # grouped / already frozen parameters are not named
    assert all(not p.requires_grad for p in toy.guidance_single_view.parameters())
    assert all(p.requires_grad for p in toy.geometry.parameters())
    grouped = [p for g in opt.param_groups for p in g["params"]]
    assert {id(p) for p in grouped} == {id(p) for p in toy.geometry.parameters()}
    # a training step leaves them untouched
    before = toy.guidance_single_view.camera_embedding.weight.clone()
    loss = toy.geometry(torch.ones(1, 3)).sum() + toy.guidance_single_view.camera_embedding(torch.ones(1, 16)).sum()
    loss.backward()
    opt.step()
    assert toy.guidance_single_view.camera_embedding.weight.grad is None
    torch.testing.assert_close(toy.guidance_single_view.camera_embedding.weight, before)


def test_the_key_makes_it_an_error():
    toy = Toy()
    with pytest.raises(ConfigError) as e:
        build_optimizer(toy, config(ungrouped_params="error"))
    assert "system.optimizer.params: trainable parameters in no optimizer group" in str(e.value)
    assert "guidance_single_view.lora_layers" in str(e.value) and "ungrouped_params=freeze" in str(e.value)
    assert all(p.requires_grad for p in toy.guidance_single_view.parameters())  # nothing frozen on refusal
    with pytest.raises(ConfigError, match="ungrouped_params"):
        config(ungrouped_params="ignore")


def test_no_orphans_no_warning(caplog):
    toy = Toy()
    cfg = parse_config(OptimizerConfig, {"params": {"geometry": {"lr": 0.01}, "guidance_single_view": {"lr": 1e-4}}},
                       "system.optimizer")  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="fourdfy.systems.optim"):
        build_optimizer(toy, cfg)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert all(p.requires_grad for p in toy.guidance_single_view.parameters())
