"""The precision policy of the frozen networks (fourdfy/guidance/precision.py) and its use by the guidances."""

import types

import pytest
import torch

from fourdfy.config import ConfigError
from fourdfy.guidance import precision
from fourdfy.guidance.multiview_diffusion_guidance import MultiviewDiffusionGuidance
from fourdfy.guidance.stable_diffusion_vsd_guidance import StableDiffusionVSDGuidance


def cfg(**kw):
    return types.SimpleNamespace(**kw)


@pytest.mark.parametrize(
    "keys, network, expected",
    [
        ({}, "mvdream", ("fp16", torch.float16)),  # auto: the provisional measured default
        ({"weights_dtype": "auto", "half_precision_weights": True}, "sd", ("fp16", torch.float16)),
        ({"weights_dtype": "auto", "half_precision_weights": False}, "mvdream", ("fp32", torch.float32)),
        ({"weights_dtype": "tf32", "half_precision_weights": False}, "sd", ("tf32", torch.float32)),
        ({"weights_dtype": "bf16"}, "videocrafter", ("bf16", torch.bfloat16)),
        ({"weights_dtype": "fp32"}, "zeroscope", ("fp32", torch.float32)),
        ({"half_precision_weights": False}, None, ("fp32", torch.float32)),  # VideoCrafter's 4D-fy configs
        ({}, "no-such-family", (precision.FALLBACK_DEFAULT, torch.float16)),
    ],
)
def test_resolution_on_cuda(keys, network, expected):
    p = precision.resolve(cfg(**keys), "cuda", network)
    assert (p.name, p.dtype) == expected
    assert p.tf32 == (p.name == "tf32")
    assert precision.resolve_dtype(cfg(**keys), torch.device("cuda:0"), network) == expected[1]


@pytest.mark.parametrize("name", precision.WEIGHTS_DTYPES)
def test_cpu_is_always_fp32(name):
    p = precision.resolve(cfg(weights_dtype=name, half_precision_weights=True), "cpu", "mvdream")
    assert (p.name, p.dtype) == ("fp32", torch.float32)


def test_auto_follows_the_network_table(monkeypatch):
    monkeypatch.setitem(precision.NETWORK_DEFAULTS, "mvdream", "tf32")
    assert precision.resolve(cfg(), "cuda", "mvdream").name == "tf32"
    assert precision.resolve(cfg(weights_dtype="bf16"), "cuda", "mvdream").name == "bf16"  # explicit wins


def test_contradicting_keys_are_a_config_error():
    with pytest.raises(ConfigError, match="contradicts half_precision_weights"):
        precision.check_config(cfg(weights_dtype="fp16", half_precision_weights=False))
    with pytest.raises(ConfigError, match="weights_dtype"):
        precision.check_config(cfg(weights_dtype="fp8"))
    precision.check_config(cfg(weights_dtype="tf32", half_precision_weights=False))  # consistent


@pytest.mark.parametrize("guidance_cls", [MultiviewDiffusionGuidance, StableDiffusionVSDGuidance])
def test_guidance_configs_take_the_keys(guidance_cls):
    from fourdfy.config import parse_config

    c = parse_config(guidance_cls.Config, {"weights_dtype": "bf16"}, "system.guidance")
    assert c.weights_dtype == "bf16" and c.half_precision_weights is True
    with pytest.raises(ConfigError, match="weights_dtype"):
        parse_config(guidance_cls.Config, {"weights_dtype": "fp64"}, "system.guidance")
    with pytest.raises(ConfigError, match="contradicts"):
        parse_config(guidance_cls.Config, {"weights_dtype": "fp16", "half_precision_weights": False}, "g")
    assert guidance_cls.precision_network in precision.NETWORK_DEFAULTS


def test_fp32_precision_flags_are_set_and_restored():
    mm = torch.backends.cuda.matmul
    before = (mm.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    old = precision._set_fp32_precision("tf32", "ieee")
    assert old == before
    assert (mm.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == ("tf32", "ieee")
    precision._restore_fp32_precision(old)
    assert (mm.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == before
    torch.backends.cuda.matmul.allow_tf32  # the legacy API still reads (no "mixed APIs" error after restoring)


def test_scoped_call_gives_the_plain_gradient():
    """The wrapper that keeps the VAE's backward inside the precision context changes no number."""
    lin = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).requires_grad_(False)
    x = torch.randn(4, 5, requires_grad=True)
    upstream = torch.randn(4, 3)
    (plain,) = torch.autograd.grad((lin(x) * upstream).sum(), x)
    y = precision._ScopedCall.apply(lin, precision.Precision("tf32", torch.float32), "cpu", x)
    assert not y.requires_grad or y.grad_fn is not None
    (scoped,) = torch.autograd.grad((y * upstream).sum(), x)
    torch.testing.assert_close(scoped, plain)
    assert plain.abs().sum() > 0
    # off CUDA the public helper is the plain call
    out = precision.call_with_math(lin, x, precision.Precision("fp32", torch.float32), "cpu")
    torch.testing.assert_close(out, lin(x))


def test_tiny_guidance_runs_fp32_on_cpu_whatever_the_key():
    g = MultiviewDiffusionGuidance({"model_name": "tiny-random-4view", "image_size": 64, "weights_dtype": "fp16"})
    assert g.precision.name == "fp32" and g.weights_dtype == torch.float32
    g.to("cpu")  # the move re-applies the policy to the frozen networks
    assert next(g.unet.parameters()).dtype == torch.float32 and next(g.vae.parameters()).dtype == torch.float32
    rgb = torch.rand(4, 16, 16, 3, requires_grad=True)
    z = g.encode_images(rgb)
    z.sum().backward()
    assert z.shape == (4, 4, 8, 8) and z.dtype == torch.float32 and rgb.grad.abs().sum() > 0
