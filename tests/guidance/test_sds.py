"""Score-distillation math on hand-made inputs, and the MVDream guidance's gradient and timestep anneal."""

import pytest
import torch

from fourdfy.guidance import sds
from fourdfy.guidance.multiview_diffusion_guidance import MultiviewDiffusionGuidance


def test_target_loss_gradient_is_z_minus_target_over_b():
    z = torch.randn(4, 4, 8, 8, requires_grad=True)
    target = torch.randn(4, 4, 8, 8)
    sds.target_loss(z, target).backward()
    torch.testing.assert_close(z.grad, (z.detach() - target) / 4)


def test_sds_loss_gradient_is_grad_over_b_and_value():
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    g = torch.randn(2, 4, 3, 3)
    loss = sds.sds_loss(z, g)
    torch.testing.assert_close(loss, 0.5 * (g**2).sum() / 2)
    loss.backward()
    torch.testing.assert_close(z.grad, g / 2)


def test_noise_algebra_round_trips():
    a = torch.tensor([0.9, 0.5, 0.01])
    x0, eps = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    xt = sds.q_sample(x0, a, eps)
    torch.testing.assert_close(sds.predict_start_from_noise(xt, a, eps), x0, atol=1e-4, rtol=1e-4)
    v = sds.velocity(x0, eps, a)
    torch.testing.assert_close(sds.v_to_eps(v, xt, a), eps, atol=1e-5, rtol=1e-5)


def test_cfg_forms():
    c, u = torch.tensor([2.0]), torch.tensor([1.0])
    assert float(sds.cfg_uncond_anchor(c, u, 50.0)) == 51.0
    assert float(sds.cfg_cond_anchor(c, u, 100.0)) == 102.0


def test_rescale_x0_std_per_object():
    x0 = torch.randn(8, 4, 4, 4)
    x0c = 3.0 * torch.randn(8, 4, 4, 4)
    out = sds.rescale_x0_std(x0, x0c, n_view=4, rescale=1.0)
    for o in range(2):
        torch.testing.assert_close(out[4 * o : 4 * o + 4].std(), x0c[4 * o : 4 * o + 4].std(), atol=1e-4, rtol=1e-4)
    half = sds.rescale_x0_std(x0, x0c, n_view=4, rescale=0.5)
    torch.testing.assert_close(half, 0.5 * out + 0.5 * x0)
    with pytest.raises(ValueError, match="multiple of n_view"):
        sds.rescale_x0_std(x0[:6], x0c[:6], n_view=4, rescale=0.5)


@pytest.fixture(scope="module")
def guidance():
    return MultiviewDiffusionGuidance({"model_name": "tiny-random-4view", "image_size": 64, "guidance_scale": 50.0})


def _cams(b):
    from fourdfy.data import cameras as cam

    az = torch.arange(b, dtype=torch.float32) * 90.0
    pos = cam.spherical_to_position(torch.full((b,), 15.0), az, torch.full((b,), 2.7))
    return cam.look_at_c2w(pos, torch.zeros(b, 3), torch.tensor([0.0, 0.0, 1.0]).expand(b, 3))


def test_mvdream_gradient_is_reconstruction_form(guidance):
    from extern.mvdream import c2w_to_mvdream_camera

    torch.manual_seed(0)
    b = 4
    z = torch.randn(b, 4, 8, 8)
    noise = torch.randn_like(z)
    t = torch.full((b,), 500, dtype=torch.long)
    cond, uncond = torch.randn(b, 77, 32), torch.randn(b, 77, 32)
    c2w = _cams(b)
    grad = guidance.latent_gradient(z, t, noise, cond, uncond, c2w)
    # by hand
    a = guidance.alphas_cumprod[500]
    zt = a.sqrt() * z + (1 - a).sqrt() * noise
    cam = c2w_to_mvdream_camera(c2w)
    with torch.no_grad():
        ec = guidance.unet(zt, t, context=cond, camera=cam, num_frames=4)
        eu = guidance.unet(zt, t, context=uncond, camera=cam, num_frames=4)
    eh = eu + 50.0 * (ec - eu)
    x0 = (zt - (1 - a).sqrt() * eh) / a.sqrt()
    x0c = (zt - (1 - a).sqrt() * ec) / a.sqrt()
    factor = (x0c.std() + 1e-8) / (x0.std() + 1e-8)
    x0 = 0.5 * factor * x0 + 0.5 * x0
    torch.testing.assert_close(grad, z - x0, atol=2e-4, rtol=2e-4)
    # and the loss puts exactly grad / B on the latents
    zz = z.clone().requires_grad_(True)
    sds.sds_loss(zz, grad).backward()
    torch.testing.assert_close(zz.grad, grad / b)


def test_mvdream_plain_sds_branch(guidance):
    g2 = MultiviewDiffusionGuidance({"model_name": "tiny-random-4view", "image_size": 64, "recon_loss": False})
    torch.manual_seed(1)
    z, noise = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    t = torch.full((4,), 300, dtype=torch.long)
    cond, uncond = torch.randn(4, 77, 32), torch.randn(4, 77, 32)
    grad = g2.latent_gradient(z, t, noise, cond, uncond, _cams(4))
    a = g2.alphas_cumprod[300]
    zt = sds.q_sample(z, a.expand(4), noise)
    ec, eu = g2.predict_noise(zt, t, cond, uncond, _cams(4))
    torch.testing.assert_close(grad, (1 - a) * (eu + 50.0 * (ec - eu) - noise), atol=1e-4, rtol=1e-4)


def test_mvdream_forward_backpropagates_to_pixels(guidance):
    from fourdfy.prompt_processors.base import PromptEmbeddings
    from fourdfy.data.random_camera import make_batch
    from fourdfy.data.batch import BatchKind

    emb = PromptEmbeddings(torch.randn(77, 32), torch.randn(77, 32), torch.randn(4, 77, 32), torch.randn(4, 77, 32),
                           30.0, 30.0, 60.0)  # fmt: skip
    batch = make_batch(torch.full((4,), 10.0), torch.arange(4.0) * 90, torch.full((4,), 3.0), torch.full((4,), 40.0),
                       16, 16, torch.zeros(1), BatchKind.MULTI_VIEW)  # fmt: skip
    rgb = torch.rand(4, 16, 16, 3, requires_grad=True)
    out = guidance(rgb, emb, batch)
    assert set(out.losses) == {"sds"} and out.losses["sds"].ndim == 0
    out.losses["sds"].backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0
    assert all(p.grad is None for p in guidance.unet.parameters())
    with pytest.raises(ValueError, match="multiple of n_view"):
        guidance(rgb[:3], emb, batch)


def test_timestep_anneal_follows_config():
    g = MultiviewDiffusionGuidance({
        "model_name": "tiny-random-4view", "min_step_percent": [0, 0.98, 0.02, 8000],
        "max_step_percent": [0, 0.98, 0.5, 8000],
    })  # fmt: skip
    expected = {0: (980, 980), 4000: (500, 740), 8000: (20, 500), 12000: (20, 500)}
    for step, (lo, hi) in expected.items():
        g.update_step(0, step)
        assert (g.min_step, g.max_step) == (lo, hi), step
    torch.manual_seed(0)
    ts = sds.sample_timesteps(2000, 20, 500, torch.device("cpu"))
    assert int(ts.min()) == 20 and int(ts.max()) == 500
