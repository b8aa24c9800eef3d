"""``system.float32_matmul_precision``: TensorFloat-32 matrix products of the trained parts during training on CUDA,
the process setting taken back when training ends, strict parsing, and TF32 gradients of a field MLP close to
strict fp32 ones (GPU)."""

from pathlib import Path

import pytest
import torch

from fourdfy.config import ConfigError
from fourdfy.experiment import load_config
from fourdfy.field_components.networks import VanillaMLP
from fourdfy.registry import build

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def tiny_system(*overrides: str):
    cfg, _ = load_config([str(SMOKE / "fourdfy_stage_1_tiny.yaml")], ["system.prompt_processor.prompt=a panda", *overrides])
    return build("system", cfg.system_type, cfg.system, "system")


@pytest.fixture
def restore_matmul_precision():
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


def test_default_is_tf32_and_other_values_name_the_key():
    assert tiny_system().cfg.float32_matmul_precision == "high"
    with pytest.raises(ConfigError, match=r"system\.float32_matmul_precision"):
        tiny_system("system.float32_matmul_precision=medium")


def test_left_alone_off_cuda(restore_matmul_precision):
    system = tiny_system()
    torch.set_float32_matmul_precision("highest")
    system.on_fit_start()
    assert torch.get_float32_matmul_precision() == "highest"
    system.on_fit_end()
    assert torch.get_float32_matmul_precision() == "highest"


@cuda
@pytest.mark.parametrize("value", ["high", "highest"])
def test_training_on_cuda_sets_it_and_its_end_takes_it_back(value, restore_matmul_precision):
    system = tiny_system(f"system.float32_matmul_precision={value}").cuda()
    torch.set_float32_matmul_precision("highest" if value == "high" else "high")
    before = torch.get_float32_matmul_precision()
    system.on_fit_start()
    assert torch.get_float32_matmul_precision() == value
    system.on_fit_end()
    assert torch.get_float32_matmul_precision() == before


@cuda
def test_tf32_field_mlp_forward_and_gradients_stay_close_to_strict_fp32(restore_matmul_precision):
    torch.manual_seed(0)
    mlp = VanillaMLP(32, 1, n_neurons=64, n_hidden_layers=1, precision="fp32").cuda()
    x = torch.randn(200_000, 32, device="cuda")
    results = {}
    for value in ("highest", "high"):
        torch.set_float32_matmul_precision(value)
        mlp.zero_grad(set_to_none=True)
        out = mlp(x)
        out.square().mean().backward()
        results[value] = (out.detach(), mlp.layers[0].weight.grad.clone(), mlp.layers[2].weight.grad.clone())
    for strict, tf32 in zip(results["highest"], results["high"]):
        rel = (tf32 - strict).norm() / strict.norm()
        assert 0 < rel < 1e-2  # TF32 ran (not bit-equal) and kept about three significant digits
