"""CUDA-graph replay gives the eager result (GPU only), and falls back to eager elsewhere; one graph per autocast
state; the guidances' `cuda_graph` switches."""

import pytest
import torch

from fourdfy.config import ConfigError
from fourdfy.guidance.cuda_graph import GraphedForward, call_signature


def test_falls_back_to_eager_on_cpu_and_with_grad():
    calls = []
    fn = GraphedForward(lambda x: calls.append(1) or x * 2)
    x = torch.ones(3)
    with torch.no_grad():
        torch.testing.assert_close(fn(x), x * 2)
    assert fn.graphs == {} and len(calls) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graphed_mvdream_guidance_matches_eager():
    from fourdfy.guidance.multiview_diffusion_guidance import MultiviewDiffusionGuidance

    g = MultiviewDiffusionGuidance({"model_name": "tiny-random-4view", "cuda_graph": True}).cuda()
    e = MultiviewDiffusionGuidance({"model_name": "tiny-random-4view", "cuda_graph": False}).cuda()
    torch.manual_seed(0)
    z = torch.randn(8, 4, 8, 8, device="cuda")
    t = torch.full((8,), 400, device="cuda")
    cond, uncond = torch.randn(8, 77, 32, device="cuda"), torch.randn(8, 77, 32, device="cuda")
    from fourdfy.data import cameras as cam

    pos = cam.spherical_to_position(torch.full((8,), 10.0), torch.arange(8.0) * 45, torch.full((8,), 3.0))
    c2w = cam.look_at_c2w(pos, torch.zeros(8, 3), torch.tensor([0.0, 0.0, 1.0]).expand(8, 3)).cuda()
    with torch.no_grad():
        for step in range(3):  # capture, then replays with new inputs
            z2 = z + step
            a = g.predict_noise(z2, t, cond, uncond, c2w)
            b = e.predict_noise(z2, t, cond, uncond, c2w)
            for x, y in zip(a, b):
                torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    assert len(g._graphed_unet.graphs) == 1


def test_call_signature_tells_autocast_states_apart():
    x, t = torch.ones(2, 3), torch.zeros(2, dtype=torch.long)
    plain = call_signature((x, t))
    assert plain == ((False, None), ((2, 3), torch.float32, x.device), ((2,), torch.long, t.device))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = call_signature((x, t))
    assert mixed[0] == (True, torch.bfloat16) and mixed[1:] == plain[1:]
    assert call_signature((x[:1], t)) != plain


def videocrafter(**overrides):
    from fourdfy.guidance.videocrafter_guidance import VideoCrafterGuidance

    return VideoCrafterGuidance({"pretrained_model_name_or_path": "tiny-random-videocrafter", "frame_size": [32, 48],
                                 "half_precision_weights": False, **overrides})  # fmt: skip


def videocrafter_inputs(device="cpu"):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 3, 4, 6, generator=g).to(device)
    cond, uncond = torch.randn(1, 77, 32, generator=g).to(device), torch.randn(1, 77, 32, generator=g).to(device)
    return z, torch.tensor([500], device=device), cond, uncond


def test_videocrafter_cuda_graph_switch_parses_and_cpu_runs_eagerly():
    graphed, eager = videocrafter(), videocrafter(cuda_graph=False)
    assert graphed.cfg.cuda_graph is True and eager.cfg.cuda_graph is False
    with pytest.raises(ConfigError, match="cuda_graph"):
        videocrafter(cuda_graph="sometimes")
    calls = []
    inner = graphed._graphed_unet.fn
    graphed._graphed_unet.fn = lambda *args: calls.append(len(args)) or inner(*args)
    eager.unet.load_state_dict(graphed.unet.state_dict())
    with torch.no_grad():
        a = graphed.predict_noise(*videocrafter_inputs())
        b = eager.predict_noise(*videocrafter_inputs())
    assert calls == [4]  # (z, t, text, fps) through the wrapper, eagerly
    assert graphed._graphed_unet.graphs == {}
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("autocast", [False, True])
def test_graphed_videocrafter_guidance_matches_eager(autocast):
    g = videocrafter().cuda()
    e = videocrafter(cuda_graph=False).cuda()
    e.unet.load_state_dict(g.unet.state_dict())
    z, t, cond, uncond = videocrafter_inputs("cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
        for step in range(3):  # capture, then replays with new inputs
            a = g.predict_noise(z + step, t, cond, uncond)
            b = e.predict_noise(z + step, t, cond, uncond)
            for x, y in zip(a, b):
                torch.testing.assert_close(x, y, atol=1e-3 if autocast else 1e-5, rtol=1e-3 if autocast else 1e-5)
    assert len(g._graphed_unet.graphs) == 1


def test_reset_drops_captured_graphs():
    fn = GraphedForward(lambda x: x + 1)
    fn.graphs[("key",)] = ("graph", [], None)
    fn.reset()
    assert fn.graphs == {}



def test_moving_a_guidance_drops_its_graphs():
    """``BaseGuidance._apply`` resets every GraphedForward of the guidance: a moved or cast network has new storage."""
    g = videocrafter()
    g._graphed_unet.graphs[("key",)] = ("graph", [], None)
    g.to(torch.float64)
    assert g._graphed_unet.graphs == {}
