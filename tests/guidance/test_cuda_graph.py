"""CUDA-graph replay gives the eager result (GPU only), and falls back to eager elsewhere; one graph per autocast
state; the guidances' `cuda_graph` switches."""

import pytest
import torch

from fourdfy.config import ConfigError
from fourdfy.guidance.cuda_graph import GraphedForward, GraphedTrainForward, call_signature


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


class _Adapted(torch.nn.Module):
    """A frozen linear layer with a trainable low-rank update and bias (a stand-in for a LoRA UNet)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.frozen = torch.nn.Linear(16, 16).requires_grad_(False)
        self.trainable = torch.nn.ModuleList([torch.nn.Linear(16, 2, bias=False), torch.nn.Linear(2, 16)])
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def call(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        down, up = self.trainable
        h = torch.relu(self.frozen(x) + up(down(x)))
        return self.frozen(h) * scale


def test_graphed_train_forward_runs_eagerly_off_cuda_without_grad_or_with_input_grad():
    m = _Adapted()
    fn = GraphedTrainForward(m.call, m.trainable)
    x, s = torch.randn(4, 16), torch.ones(4, 1)
    out = fn(x, s)
    out.square().sum().backward()
    torch.testing.assert_close(out, m.call(x, s), rtol=0, atol=0)
    assert all(p.grad is not None for p in m.trainable.parameters())
    assert m.frozen.weight.grad is None
    with torch.no_grad():
        assert not fn(x, s).requires_grad
    assert fn.graphs == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("autocast", [False, True])
def test_graphed_train_forward_matches_eager_forward_and_backward_after_in_place_updates(autocast):
    graphed_m, eager_m = _Adapted().cuda(), _Adapted().cuda()
    fn = GraphedTrainForward(graphed_m.call, graphed_m.trainable)
    gen = torch.Generator(device="cuda").manual_seed(0)
    tol = dict(atol=2e-3, rtol=2e-3) if autocast else dict(atol=1e-5, rtol=1e-5)
    for step in range(4):  # the first call captures (after its warm-up), the others replay with new inputs
        x = torch.randn(8, 16, device="cuda", generator=gen)
        s = torch.rand(8, 1, device="cuda", generator=gen)
        outs = []
        for model, call in ((graphed_m, fn), (eager_m, eager_m.call)):
            model.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
                out = call(x, s)
            (out.float().square().sum() * (step + 1)).backward()
            outs.append((out.detach().clone(), [p.grad.clone() for p in model.trainable.parameters()]))
        torch.testing.assert_close(outs[0][0], outs[1][0], **tol)
        for a, b in zip(outs[0][1], outs[1][1]):
            assert a.abs().sum() > 0
            torch.testing.assert_close(a, b, **tol)
        assert graphed_m.frozen.weight.grad is None
        with torch.no_grad():  # an optimizer step: same storage, new values, seen by the next replay
            for model in (graphed_m, eager_m):
                for p in model.trainable.parameters():
                    p.sub_(0.05 * p.grad)
    assert len(fn.graphs) == 1
    down, up = graphed_m.trainable
    down.requires_grad_(False)  # a parameter frozen after capture: another backward graph, and no gradient for it
    graphed_m.zero_grad(set_to_none=True)
    fn(x, s).square().sum().backward()
    assert down.weight.grad is None and up.weight.grad is not None and len(fn.graphs) == 2
    down.requires_grad_(True)
    x = torch.randn(8, 16, device="cuda", generator=gen, requires_grad=True)
    fn(x, s).sum().backward()  # an input that needs a gradient is not what the graphs were captured for: eager
    assert x.grad is not None and len(fn.graphs) == 2
    fn.reset()
    assert fn.graphs == {}
