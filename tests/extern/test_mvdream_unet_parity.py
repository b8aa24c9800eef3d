"""MultiViewUNetModel vs the golden outputs of the original MVDream module (../shared/guidance-parity)."""

import json
from pathlib import Path

import jaxtyping
import pytest
import torch
from safetensors.torch import load_file

from extern.mvdream.camera import c2w_to_mvdream_camera
from extern.mvdream.unet import MVDREAM_UNET_CONFIGS, MultiViewUNetModel, timestep_embedding

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "guidance-parity"
CASE = "mvdream_unet_small"
pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"golden fixture directory {FIXTURES} is absent")

# output name -> call arguments that produced it (see the case's json "call")
CALLS = {
    "out": {"camera": True, "num_frames": 4},
    "out_no_camera": {"camera": False, "num_frames": 4},
    "out_num_frames_1": {"camera": True, "num_frames": 1},
}


@pytest.fixture(scope="module")
def case() -> dict:
    meta = json.loads((FIXTURES / f"{CASE}.json").read_text())
    prefix = meta["state_dict_prefix"]
    raw = load_file(FIXTURES / f"{CASE}.state_dict.safetensors")
    assert all(k.startswith(prefix) for k in raw)
    model = MultiViewUNetModel(**meta["kwargs"]).eval()
    model.load_state_dict({k[len(prefix):]: v for k, v in raw.items()}, strict=True)
    return {"model": model, "io": load_file(FIXTURES / f"{CASE}.io.safetensors"), "meta": meta}


@pytest.mark.parametrize("output", sorted(CALLS))
def test_unet_matches_original(case: dict, output: str) -> None:
    io, call = case["io"], CALLS[output]
    with torch.no_grad():
        out = case["model"](io["x"], io["t"], io["context"], io["camera"] if call["camera"] else None,
                            num_frames=call["num_frames"])
    torch.testing.assert_close(out, io[output], rtol=1e-4, atol=1e-5)


def test_fixture_outputs_are_distinct(case: dict) -> None:
    # guards the test above: camera and view fold must each change the result
    io = case["io"]
    for a, b in (("out", "out_no_camera"), ("out", "out_num_frames_1")):
        assert (io[a] - io[b]).abs().max() > 1e-2


def test_camera_from_c2w_matches_fixture(case: dict) -> None:
    c2w = case["io"]["c2w"].clone()
    camera = c2w_to_mvdream_camera(c2w)
    torch.testing.assert_close(camera, case["io"]["camera"], rtol=0, atol=1e-6)
    assert torch.equal(c2w, case["io"]["c2w"]), "input c2w must not be modified"
    # translation part has unit length, last row kept
    matrix = camera.reshape(-1, 4, 4)
    torch.testing.assert_close(matrix[:, :3, 3].norm(dim=-1), torch.ones(len(c2w)), rtol=0, atol=1e-6)
    assert torch.equal(matrix[:, 3], c2w[:, 3])


def test_views_attend_within_object_only(case: dict) -> None:
    # changing object 1's input must leave object 0's prediction untouched (views of one object are contiguous)
    io = case["io"]
    x = io["x"].clone()
    x[4:] += 1.0
    with torch.no_grad():
        out = case["model"](x, io["t"], io["context"], io["camera"], num_frames=4)
    torch.testing.assert_close(out[:4], io["out"][:4], rtol=1e-4, atol=1e-5)
    assert (out[4:] - io["out"][4:]).abs().max() > 1e-2


def test_bf16_close_to_fp32(case: dict) -> None:
    io = case["io"]
    model = MultiViewUNetModel(**case["meta"]["kwargs"]).eval()
    model.load_state_dict(case["model"].state_dict(), strict=True)
    model.to(torch.bfloat16)
    with torch.no_grad():
        out = model(io["x"], io["t"], io["context"], io["camera"], num_frames=4)
    assert out.dtype == torch.float32  # output follows the input dtype
    rel = (out - io["out"]).norm() / io["out"].norm()
    assert rel < 5e-2, f"bf16 relative error {rel:.3g}"


def test_forward_traces_without_graph_breaks(case: dict) -> None:
    # torch.compile / CUDA-graph friendliness: one graph, no data-dependent control flow. The test-suite's runtime
    # type-check hook is not traceable, so it is switched off for this call only.
    io = case["io"]
    torch._dynamo.reset()
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        with torch.no_grad():
            explanation = torch._dynamo.explain(case["model"])(io["x"], io["t"], io["context"], io["camera"],
                                                               num_frames=4)
    finally:
        jaxtyping.config.update("jaxtyping_disable", False)
        torch._dynamo.reset()
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_timestep_embedding_is_cos_first() -> None:
    emb = timestep_embedding(torch.tensor([0, 7]), 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(7 * freqs), torch.sin(7 * freqs)]))


def test_invalid_arguments_are_rejected(case: dict) -> None:
    kwargs = dict(case["meta"]["kwargs"])
    for name, value in (("use_scale_shift_norm", True), ("use_linear_in_transformer", False), ("dims", 3),
                        ("num_classes", 10), ("use_fp16", True)):
        with pytest.raises(ValueError, match=name):
            MultiViewUNetModel(**{**kwargs, name: value})
    with pytest.raises(ValueError, match="num_heads"):
        MultiViewUNetModel(**{**kwargs, "num_heads": 2})  # both num_heads and num_head_channels
    io = case["io"]
    with pytest.raises(ValueError, match="num_frames=3"):
        case["model"](io["x"], io["t"], io["context"], io["camera"], num_frames=3)
    no_camera = MultiViewUNetModel(**{**kwargs, "camera_dim": None})
    with pytest.raises(ValueError, match="camera_dim=None"):
        no_camera(io["x"], io["t"], io["context"], io["camera"], num_frames=4)


def test_full_size_config_matches_reference() -> None:
    cfg = MVDREAM_UNET_CONFIGS["sd-v2.1-base-4view"]
    assert (cfg["model_channels"], cfg["channel_mult"], cfg["num_head_channels"], cfg["context_dim"],
            cfg["camera_dim"]) == (320, [1, 2, 4, 4], 64, 1024, 16)
