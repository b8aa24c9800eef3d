"""CUDA-graph replay gives the eager result (GPU only), and falls back to eager elsewhere."""

import pytest
import torch

from fourdfy.guidance.cuda_graph import GraphedForward


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


def test_reset_drops_captured_graphs():
    fn = GraphedForward(lambda x: x + 1)
    fn.graphs[("key",)] = ("graph", [], None)
    fn.reset()
    assert fn.graphs == {}

