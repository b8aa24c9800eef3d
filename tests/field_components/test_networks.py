"""``VanillaMLP``'s ``precision``: reduced precision under autocast agrees with fp32; ``fp32`` ignores autocast."""

import pytest
import torch

from fourdfy.config import ConfigError
from fourdfy.field_components.activations import Activation
from fourdfy.field_components.encoding_configs import parse_mlp_config
from fourdfy.field_components.networks import VanillaMLP, get_mlp, runs_reduced

UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
"""bf16 keeps 8 significand bits, fp16 11: rounding a value changes it by at most this fraction."""
REDUCED_CASES = [
    pytest.param("cpu", torch.bfloat16, "autocast", id="cpu-bf16-autocast"),
    pytest.param("cuda", torch.float16, "auto", id="cuda-fp16-auto",
                 marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")),
]  # fmt: skip
"""The reduced mode where it runs: ``autocast`` under CPU bf16; ``auto`` under CUDA fp16 (what 16-mixed does)."""


def pair(n_hidden_layers: int, seed: int, precision: str = "autocast") -> tuple[VanillaMLP, VanillaMLP]:
    """A reduced-precision MLP and an ``fp32`` MLP with the same weights."""
    torch.manual_seed(seed)
    reduced = VanillaMLP(32, 4, n_neurons=64, n_hidden_layers=n_hidden_layers, precision=precision)
    full = VanillaMLP(32, 4, n_neurons=64, n_hidden_layers=n_hidden_layers, precision="fp32")
    full.load_state_dict(reduced.state_dict(), strict=True)
    return reduced, full


def relu_masks(net: VanillaMLP) -> list[torch.Tensor]:
    """Filled, by forward hooks, with each hidden ReLU's ``output > 0`` per sample."""
    masks: list[torch.Tensor] = []
    for m in net.layers:
        if isinstance(m, Activation):
            m.register_forward_hook(lambda _m, _i, out: masks.append(out.detach() > 0))
    return masks


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_precision_key_parses_and_rule():
    base = {"otype": "VanillaMLP", "n_neurons": 8, "n_hidden_layers": 1}
    assert parse_mlp_config(base, "mlp").precision == "auto"
    assert parse_mlp_config({**base, "precision": "fp32"}, "mlp").precision == "fp32"
    with pytest.raises(ConfigError, match=r"mlp\.precision"):
        parse_mlp_config({**base, "precision": "fp16"}, "mlp")
    assert get_mlp(3, 1, {**base, "precision": "fp32"}, "mlp").precision == "fp32"
    with pytest.raises(ValueError, match="precision"):
        VanillaMLP(3, 1, 8, 1, precision="half")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert runs_reduced("auto", cuda) and not runs_reduced("auto", cpu)
    assert runs_reduced("autocast", cpu) and runs_reduced("autocast", cuda)
    assert not runs_reduced("fp32", cuda) and not runs_reduced("fp32", cpu)


def test_precision_adds_no_state():
    keys = {p: list(VanillaMLP(9, 3, 16, 2, precision=p).state_dict()) for p in ("auto", "autocast", "fp32")}
    assert keys["auto"] == keys["autocast"] == keys["fp32"] == ["layers.0.weight", "layers.2.weight", "layers.4.weight"]


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_full_precision_ignores_cpu_autocast_bitwise(precision):
    # "fp32" everywhere, and "auto" off CUDA: autocast is switched off inside, so the result is bit for bit the
    # result without autocast, forward and backward
    torch.manual_seed(0)
    mlp = VanillaMLP(32, 4, n_neurons=64, n_hidden_layers=2, precision=precision)
    x = torch.randn(256, 32)
    outs, grads = [], []
    for enabled in (False, True):
        mlp.zero_grad()
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            y = mlp(xi)
        y.square().sum().backward()
        outs.append(y)
        grads.append([xi.grad] + [p.grad.clone() for p in mlp.parameters()])
    assert outs[1].dtype == torch.float32
    assert torch.equal(outs[0], outs[1])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


@pytest.mark.parametrize("device, dtype, precision", REDUCED_CASES)
@pytest.mark.parametrize("n_hidden_layers", [1, 2, 3])
def test_reduced_precision_under_autocast_agrees_with_fp32(n_hidden_layers, device, dtype, precision):
    # Tolerance: each linear layer rounds its two operands to bf16/fp16 (relative error <= u each) and
    # accumulates in fp32, so to first order a layer adds <= 2u of relative error and L linear layers <= 2 L u
    # (measured: about 0.5 L u, over 30 seeds). Backward is the same GEMMs transposed, with the same bound.
    # ReLU's derivative is discontinuous: where rounding flips the sign of a pre-activation the gradient of that
    # sample differs by O(1), not O(u) (about 0.1 % of units, which moves a few % of the samples). So gradients are
    # compared on the samples whose ReLU pattern is the same in both passes (the others get a zero upstream
    # gradient); most samples qualify.
    reduced, full = (m.to(device) for m in pair(n_hidden_layers, seed=n_hidden_layers, precision=precision))
    masks_r, masks_f = relu_masks(reduced), relu_masks(full)
    x = torch.randn(512, 32, generator=torch.Generator().manual_seed(1)).to(device)
    xr, xf = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    with torch.autocast(device, dtype=dtype):
        yr, yf = reduced(xr), full(xf)
    assert yr.dtype == yf.dtype == torch.float32
    assert not torch.equal(yr, yf)  # the reduced path did run in reduced precision
    tol = 2 * (n_hidden_layers + 1) * UNIT_ROUNDOFF[dtype]
    assert rel_err(yr, yf) < tol
    same = torch.stack([(a == b).all(-1) for a, b in zip(masks_r, masks_f)]).all(0)
    assert same.float().mean() > 0.6
    upstream = torch.randn(yf.shape, generator=torch.Generator().manual_seed(2)).to(device) * same[:, None]
    (yr * upstream).sum().backward()
    (yf * upstream).sum().backward()
    assert rel_err(xr.grad, xf.grad) < tol
    for (name, pr), pf in zip(reduced.named_parameters(), full.parameters()):
        assert pr.grad.dtype == torch.float32, name
        assert rel_err(pr.grad, pf.grad) < tol, name


def test_reduced_precision_without_autocast_is_fp32():
    reduced, full = pair(2, seed=0)
    x = torch.randn(64, 32)
    assert torch.equal(reduced(x), full(x))


def test_partial_mlp_dict_amends_the_geometry_default():
    """``system.geometry.mlp_network_config.precision=fp32`` on a config that never wrote the MLP dict (4D-fy's
    YAMLs) amends the default MLP instead of failing on a missing ``otype``; a full dict replaces it."""
    from fourdfy.geometry.implicit_volume import DEFAULT_MLP, ImplicitVolume

    cfg = ImplicitVolume.Config(mlp_network_config={"precision": "fp32"})
    assert cfg.mlp_network_config == {**DEFAULT_MLP, "precision": "fp32"}
    full = {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none", "n_neurons": 32,
            "n_hidden_layers": 2}  # fmt: skip
    assert ImplicitVolume.Config(mlp_network_config=dict(full)).mlp_network_config == full
