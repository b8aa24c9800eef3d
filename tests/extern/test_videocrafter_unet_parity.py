"""VideoCrafterUNetModel vs the golden outputs of the original LVDM module (../shared/guidance-parity).

The fixture runs x [2,4,5,16,24]: 5 frames (not the training length 16), a non-square latent, per-sample timesteps
[999, 20] and fps [8, 8] (``out``), and the int-fps default 16 (``out_default_fps16``).
"""

from pathlib import Path

import jaxtyping
import pytest
import torch
from safetensors.torch import load_file

from extern.videocrafter.unet import VIDEOCRAFTER2_UNET_CONFIGS, VideoCrafterUNetModel, unet_config_from_json

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "guidance-parity"
CASE = "vc2_unet_small"
RTOL, ATOL = 1e-4, 1e-5
pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"golden fixture directory {FIXTURES} is absent")


@pytest.fixture(scope="module")
def case() -> dict:
    config = unet_config_from_json(FIXTURES / f"{CASE}.json")
    prefix = "model.diffusion_model."
    raw = load_file(FIXTURES / f"{CASE}.state_dict.safetensors")
    assert all(k.startswith(prefix) for k in raw)
    model = VideoCrafterUNetModel(**config).eval()
    model.load_state_dict({k[len(prefix):]: v for k, v in raw.items()}, strict=True)
    return {"model": model, "io": load_file(FIXTURES / f"{CASE}.io.safetensors"), "config": config}


def _run(case: dict, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return case["model"](x, t, context, **kwargs)


def test_fixture_shape_is_not_the_training_length(case: dict) -> None:
    io = case["io"]
    assert io["x"].shape[2] != case["config"]["temporal_length"]
    assert io["t"].tolist() == [999, 20] and io["fps"].tolist() == [8, 8]
    assert (io["out"] - io["out_default_fps16"]).abs().max() > 1e-2  # the fps path really changes the output


def test_matches_original_with_fps_tensor(case: dict) -> None:
    io = case["io"]
    torch.testing.assert_close(_run(case, io["x"], io["t"], io["context"], fps=io["fps"]), io["out"],
                               rtol=RTOL, atol=ATOL)


def test_matches_original_with_default_fps(case: dict) -> None:
    io = case["io"]
    torch.testing.assert_close(_run(case, io["x"], io["t"], io["context"]), io["out_default_fps16"],
                               rtol=RTOL, atol=ATOL)


def test_fps_as_number_or_scalar_tensor(case: dict) -> None:
    io = case["io"]
    for fps in (8, 8.0, torch.tensor(8), torch.tensor([8])):
        torch.testing.assert_close(_run(case, io["x"], io["t"], io["context"], fps=fps), io["out"],
                                   rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match="fps of shape"):
        _run(case, io["x"], io["t"], io["context"], fps=torch.tensor([8, 8, 8]))


def test_per_sample_fps_in_one_batch(case: dict) -> None:
    # sample 0 at fps 8 (as in `out`), sample 1 at fps 16 (as in `out_default_fps16`), in one call
    io = case["io"]
    out = _run(case, io["x"], io["t"], io["context"], fps=torch.tensor([8, 16]))
    torch.testing.assert_close(out[0], io["out"][0], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(out[1], io["out_default_fps16"][1], rtol=RTOL, atol=ATOL)


def test_samples_are_independent_and_frames_interact(case: dict) -> None:
    io = case["io"]
    # each sample alone (its own t and fps) gives its row of the batched result
    for i in range(2):
        alone = _run(case, io["x"][i:i + 1], io["t"][i:i + 1], io["context"][i:i + 1], fps=io["fps"][i:i + 1])
        torch.testing.assert_close(alone[0], io["out"][i], rtol=RTOL, atol=ATOL)
    # perturbing the last frame of sample 1 changes every frame of sample 1 (temporal layers) and nothing of sample 0
    x = io["x"].clone()
    x[1, :, -1] += 1.0
    out = _run(case, x, io["t"], io["context"], fps=io["fps"])
    torch.testing.assert_close(out[0], io["out"][0], rtol=RTOL, atol=ATOL)
    change = (out[1] - io["out"][1]).abs().amax(dim=(0, 2, 3))
    assert (change > 1e-3).all(), change


@pytest.mark.parametrize("frames", [1, 8, 16])
def test_other_frame_counts_run(case: dict, frames: int) -> None:
    io = case["io"]
    g = torch.Generator().manual_seed(frames)
    x = torch.randn(2, 4, frames, 16, 24, generator=g)
    out = _run(case, x, io["t"], io["context"], fps=io["fps"])
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_bf16_close_to_fp32(case: dict) -> None:
    io = case["io"]
    model = VideoCrafterUNetModel(**case["config"]).eval()
    model.load_state_dict(case["model"].state_dict(), strict=True)
    model.to(torch.bfloat16)
    with torch.no_grad():
        out = model(io["x"], io["t"], io["context"], fps=io["fps"])
    assert out.dtype == torch.float32  # output follows the input dtype
    rel = (out - io["out"]).norm() / io["out"].norm()
    assert rel < 5e-2, f"bf16 relative error {rel:.3g}"


def test_gradient_checkpointing_gives_the_same_gradients(case: dict) -> None:
    io = case["io"]
    x = io["x"][:1].clone().requires_grad_(True)
    model = case["model"]
    grads = []
    for use_checkpoint in (False, True):
        model.use_checkpoint = use_checkpoint
        try:
            out = model(x, io["t"][:1], io["context"][:1], fps=io["fps"][:1])
            (grad,) = torch.autograd.grad(out.square().mean(), x)
        finally:
            model.use_checkpoint = False
        grads.append(grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


def test_forward_traces_without_graph_breaks(case: dict) -> None:
    # torch.compile / CUDA-graph friendliness: one graph, no data-dependent control flow. The test-suite's runtime
    # type-check hook is not traceable, so it is switched off for this call only.
    io = case["io"]
    torch._dynamo.reset()
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        with torch.no_grad():
            explanation = torch._dynamo.explain(case["model"])(io["x"], io["t"], io["context"], io["fps"])
    finally:
        jaxtyping.config.update("jaxtyping_disable", False)
        torch._dynamo.reset()
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_invalid_arguments_are_rejected(case: dict) -> None:
    kwargs = dict(case["config"])
    for name, value in (("use_relative_position", True), ("use_causal_attention", True), ("dims", 3),
                        ("temporal_selfatt_only", False), ("use_image_attention", True), ("use_fp16", True),
                        ("tempspatial_aware", True), ("use_scale_shift_norm", True)):
        with pytest.raises(ValueError, match=name):
            VideoCrafterUNetModel(**{**kwargs, name: value})
    with pytest.raises(ValueError, match="num_heads"):
        VideoCrafterUNetModel(**{**kwargs, "num_heads": 2})  # both num_heads and num_head_channels
    with pytest.raises(ValueError, match="addition_attention"):
        VideoCrafterUNetModel(**{**kwargs, "num_heads": 2, "num_head_channels": -1})  # init_attn needs head width


def test_optional_temporal_parts_can_be_switched_off(case: dict) -> None:
    kwargs = {**case["config"], "temporal_conv": False, "temporal_attention": False, "addition_attention": False,
              "fps_cond": False}
    model = VideoCrafterUNetModel(**kwargs).eval()
    names = list(model.state_dict())
    assert not [n for n in names if "temopral_conv" in n or "init_attn" in n or "fps_embedding" in n]
    assert not [n for n in names if n.startswith("input_blocks.1.2.")]
    io = case["io"]
    with torch.no_grad():
        out = model(io["x"], io["t"], io["context"], fps=io["fps"])
    assert out.shape == io["x"].shape


def test_full_size_config_matches_reference() -> None:
    cfg = VIDEOCRAFTER2_UNET_CONFIGS["t2v_512_v2"]
    assert (cfg["model_channels"], cfg["channel_mult"], cfg["num_head_channels"], cfg["context_dim"],
            cfg["temporal_length"], cfg["use_linear"]) == (320, [1, 2, 4, 4], 64, 1024, 16, True)
    assert cfg["temporal_conv"] and cfg["temporal_attention"] and cfg["addition_attention"] and cfg["fps_cond"]
