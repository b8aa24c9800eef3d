"""``VanillaMLP``'s ``precision``: reduced precision (under autocast, or fp16 with its loss-scaled backward) agrees
with fp32; ``fp32`` ignores autocast."""

import pytest
import torch

from fourdfy.config import ConfigError
from fourdfy.field_components.activations import Activation
from fourdfy.field_components.encoding_configs import parse_mlp_config
from fourdfy.field_components import networks
from fourdfy.field_components.networks import VanillaMLP, get_mlp, mlp_mode

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


def test_precision_key_parses_and_rule(monkeypatch):
    base = {"otype": "VanillaMLP", "n_neurons": 8, "n_hidden_layers": 1}
    assert parse_mlp_config(base, "mlp").precision == "auto"
    assert parse_mlp_config({**base, "precision": "fp32"}, "mlp").precision == "fp32"
    assert parse_mlp_config({**base, "precision": "fp16"}, "mlp").precision == "fp16"
    with pytest.raises(ConfigError, match=r"mlp\.precision"):
        parse_mlp_config({**base, "precision": "half"}, "mlp")
    assert get_mlp(3, 1, {**base, "precision": "fp32"}, "mlp").precision == "fp32"
    with pytest.raises(ValueError, match="precision"):
        VanillaMLP(3, 1, 8, 1, precision="half")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert mlp_mode("auto", cpu) == "fp32" and mlp_mode("fp32", cuda) == "fp32" and mlp_mode("fp32", cpu) == "fp32"
    assert mlp_mode("fp16", cpu) == mlp_mode("fp16", cuda) == "fp16"
    assert mlp_mode("autocast", cpu) == mlp_mode("autocast", cuda) == "ambient"
    # auto on CUDA: fp16 outside an autocast region (trainer.precision 32), the ambient autocast inside one
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device_type: False)
    assert mlp_mode("auto", cuda) == "fp16"
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device_type: device_type == "cuda")
    assert mlp_mode("auto", cuda) == "ambient" and mlp_mode("fp16", cuda) == "fp16"


def test_precision_adds_no_state():
    keys = {p: list(VanillaMLP(9, 3, 16, 2, precision=p).state_dict()) for p in ("auto", "autocast", "fp16", "fp32")}
    assert keys["auto"] == keys["autocast"] == keys["fp16"] == keys["fp32"] == ["layers.0.weight", "layers.2.weight", "layers.4.weight"]


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


FP16_CASES = [
    pytest.param("cpu", "fp16", id="cpu-fp16"),
    pytest.param("cuda", "auto", id="cuda-auto",
                 marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")),
]  # fmt: skip
"""The fp16 mode without any ambient autocast: explicit on the CPU; what ``auto`` is on CUDA under precision 32."""


def fp16_against_fp32(device: str, precision: str, upstream_scale: float) -> tuple[float, float, dict[str, float]]:
    """Relative errors (output, input gradient, weight gradients) of an fp16-mode MLP against its fp32 twin, no
    ambient autocast, for an upstream gradient of size ``upstream_scale`` on the samples whose ReLU patterns agree
    (see the tolerance note of the autocast test above)."""
    reduced, full = (m.to(device) for m in pair(2, seed=3, precision=precision))
    masks_r, masks_f = relu_masks(reduced), relu_masks(full)
    x = torch.randn(512, 32, generator=torch.Generator().manual_seed(4)).to(device)
    xr, xf = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    yr, yf = reduced(xr), full(xf)
    assert yr.dtype == torch.float32 and not torch.equal(yr, yf)  # fp16 did run
    same = torch.stack([(a == b).all(-1) for a, b in zip(masks_r, masks_f)]).all(0)
    assert same.float().mean() > 0.6
    upstream = torch.randn(yf.shape, generator=torch.Generator().manual_seed(5)).to(device) * same[:, None]
    (yr * upstream * upstream_scale).sum().backward()
    (yf * upstream * upstream_scale).sum().backward()
    weights = {n: rel_err(pr.grad, pf.grad) for (n, pr), pf in zip(reduced.named_parameters(), full.parameters())}
    assert all(p.grad.dtype == torch.float32 for p in reduced.parameters())
    return rel_err(yr, yf), rel_err(xr.grad, xf.grad), weights


@pytest.mark.parametrize("device, precision", FP16_CASES)
@pytest.mark.parametrize("upstream_scale", [1.0, 1e-5])
def test_fp16_mode_agrees_with_fp32_forward_and_backward(device, precision, upstream_scale):
    # 1e-5: per-sample gradients of the size an SDS loss spreads over 256x256 pixels and their samples. Unscaled,
    # the hidden gradients (~1e-6) would be fp16 subnormals with a few significant bits; the loss scale keeps 11.
    tol = 2 * 3 * UNIT_ROUNDOFF[torch.float16]  # 3 linear layers, the bound of the autocast test
    out, grad_x, grad_w = fp16_against_fp32(device, precision, upstream_scale)
    assert out < tol and grad_x < tol
    assert all(e < tol for e in grad_w.values()), grad_w


def test_fp16_loss_scale_is_what_keeps_small_gradients(monkeypatch):
    # The same comparison without the loss scale fails for the small upstream gradient: the test above can fail
    monkeypatch.setattr(networks, "FP16_GRAD_SCALE", 1.0)
    tol = 2 * 3 * UNIT_ROUNDOFF[torch.float16]
    _, grad_x, grad_w = fp16_against_fp32("cpu", "fp16", 1e-5)
    assert max(grad_x, *grad_w.values()) > tol
    _, grad_x, grad_w = fp16_against_fp32("cpu", "fp16", 1.0)  # at ordinary sizes the scale changes nothing
    assert max(grad_x, *grad_w.values()) < tol


def test_partial_mlp_dict_amends_the_geometry_default():
    """``system.geometry.mlp_network_config.precision=fp32`` on a config that never wrote the MLP dict (4D-fy's
    YAMLs) amends the default MLP instead of failing on a missing ``otype``; a full dict replaces it."""
    from fourdfy.geometry.implicit_volume import DEFAULT_MLP, ImplicitVolume

    cfg = ImplicitVolume.Config(mlp_network_config={"precision": "fp32"})
    assert cfg.mlp_network_config == {**DEFAULT_MLP, "precision": "fp32"}
    full = {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none", "n_neurons": 32,
            "n_hidden_layers": 2}  # fmt: skip
    assert ImplicitVolume.Config(mlp_network_config=dict(full)).mlp_network_config == full
