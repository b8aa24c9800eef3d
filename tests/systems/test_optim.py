"""``system.optimizer.fused``: on CUDA the optimizer steps with torch's fused implementation, which gives the update
of the default implementation up to rounding (compared here on the CPU, where torch has fused Adam too, and on CUDA
where the suite runs on a GPU)."""

import pytest
import torch
from torch import nn

from fourdfy.config import parse_config
from fourdfy.systems.optim import OptimizerConfig, build_optimizer, use_fused


def config(**kw) -> OptimizerConfig:
    return parse_config(OptimizerConfig, {"name": "AdamW", "params": {"net": {"lr": 0.01}}, **kw}, "system.optimizer")


def test_fused_is_chosen_on_cuda_only_and_never_over_explicit_args():
    adamw, sgd_like = torch.optim.AdamW, torch.optim.Adadelta  # Adadelta has no fused implementation
    assert use_fused(adamw, config(), {"cuda"})
    assert not use_fused(adamw, config(), {"cpu"})
    assert not use_fused(adamw, config(), {"cuda", "cpu"})
    assert not use_fused(adamw, config(fused=False), {"cuda"})
    assert not use_fused(adamw, config(args={"foreach": True}), {"cuda"})
    assert not use_fused(adamw, config(args={"fused": False}), {"cuda"})
    assert not use_fused(sgd_like, config(name="Adadelta"), {"cuda"})


def test_cpu_build_keeps_the_default_implementation():
    system = nn.Module()
    system.net = nn.Linear(3, 2)
    opt = build_optimizer(system, config())
    assert not opt.param_groups[0]["fused"]


def run_steps(device: str, fused: bool, steps: int = 5) -> list[torch.Tensor]:
    """AdamW steps (4D-fy's optimizer) on a hash-grid-like table and an MLP weight, default or fused."""
    gen = torch.Generator().manual_seed(0)
    params = [nn.Parameter(torch.randn(4096, 2, generator=gen).to(device) * 1e-2),
              nn.Parameter(torch.randn(64, 32, generator=gen).to(device))]  # fmt: skip
    opt = torch.optim.AdamW(params, lr=0.01, betas=(0.9, 0.99), eps=1e-15, weight_decay=0.01,
                            **({"fused": True} if fused else {"foreach": device == "cuda"}))  # fmt: skip
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(device) * 1e-3
        opt.step()
    return [p.detach().cpu() for p in params]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])  # fmt: skip
def test_fused_update_matches_the_default_one(device):
    start = run_steps(device, fused=False, steps=0)
    default, fused = run_steps(device, fused=False), run_steps(device, fused=True)
    for s, d, f in zip(start, default, fused):
        assert not torch.equal(d, s)  # the steps moved the parameters
        torch.testing.assert_close(f, d, rtol=1e-5, atol=1e-7)
