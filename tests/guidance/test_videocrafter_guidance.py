"""``videocrafter-guidance`` on the tiny random VideoCrafter2 stand-in (CPU), and its pure video-SDS functions."""

import dataclasses

import pytest
import torch
from compiled_unet import assert_compiled_unet_predicts_eager, passthrough_compile
from vae_encodings import compare_vae_encodings

from fourdfy.config import ConfigError
from fourdfy.data.batch import BatchKind, CameraBatch
from fourdfy.errors import MissingWeightsError
from fourdfy.guidance import video_sds_videocrafter as vsv
from fourdfy.guidance.videocrafter_guidance import VideoCrafterGuidance, VideoSDSDraws
from fourdfy.prompt_processors.base import PromptEmbeddings
from fourdfy.registry import validate

TINY = "tiny-random-videocrafter"
FRAME_SIZE = (32, 48)  # latents 4 x 6: small enough for CPU, even for the 2-level tiny UNet
LATENT = (4, 6)


def make_guidance(**overrides) -> VideoCrafterGuidance:
    cfg = {"pretrained_model_name_or_path": TINY, "frame_size": list(FRAME_SIZE), "fps": 8, "motion_amp_scale": 30.0,
           "half_precision_weights": False, **overrides}  # fmt: skip
    return VideoCrafterGuidance(cfg)


def with_cfg(guidance: VideoCrafterGuidance, **changes) -> VideoCrafterGuidance:
    """The same (already built) guidance with other config values."""
    guidance.cfg = dataclasses.replace(guidance.cfg, **changes)
    return guidance


@pytest.fixture(scope="module")
def guidance() -> VideoCrafterGuidance:
    return make_guidance()


@pytest.fixture(autouse=True)
def default_cfg(guidance):
    saved = guidance.cfg
    yield
    guidance.cfg = saved


def make_prompts(d: int = 32, length: int = 77) -> PromptEmbeddings:
    g = torch.Generator().manual_seed(11)
    return PromptEmbeddings(
        cond=torch.randn(length, d, generator=g), uncond=torch.randn(length, d, generator=g),
        cond_directional=torch.randn(4, length, d, generator=g),
        uncond_directional=torch.randn(4, length, d, generator=g),
        front_threshold=45.0, back_threshold=45.0, overhead_threshold=60.0,
    )  # fmt: skip


def make_batch(b: int, num_frames: int, height: int = 16, width: int = 24) -> CameraBatch:
    c2w = torch.eye(4).repeat(b, 1, 1)
    return CameraBatch(
        rays_o=torch.zeros(b, height, width, 3), rays_d=torch.zeros(b, height, width, 3), mvp_mtx=c2w.clone(),
        c2w=c2w, camera_positions=torch.zeros(b, 3), light_positions=torch.zeros(b, 3),
        elevation=torch.tensor([10.0, 20.0][:b]), azimuth=torch.tensor([0.0, 90.0][:b]),  # front, side
        camera_distances=torch.full((b,), 2.5), fovy=torch.full((b,), 40.0),
        times=torch.linspace(0, 1, num_frames)[None].expand(b, -1), height=height, width=width, kind=BatchKind.VIDEO,
    )  # fmt: skip


def make_rgb(b: int, num_frames: int, height: int = 16, width: int = 24, seed: int = 13) -> torch.Tensor:
    return torch.rand(b, num_frames, height, width, 3, generator=torch.Generator().manual_seed(seed))


def ldm_alphas_cumprod() -> torch.Tensor:
    """LDM's "linear" schedule by hand: sqrt-spaced betas in float64, cumulative product, stored as float32."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def record_unet_inputs(guidance: VideoCrafterGuidance) -> tuple[list, object]:
    calls = []
    handle = guidance.unet.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append((args, kwargs)), with_kwargs=True
    )
    return calls, handle


# ----------------------------------------------------------------------------------------------------------------
# the gradient against a hand computation
# ----------------------------------------------------------------------------------------------------------------


def test_gradient_on_fixed_noise_and_t_matches_hand_computation(guidance):
    b, t_frames = 2, 5
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(b, 4, t_frames, *LATENT, generator=gen)
    draws = VideoSDSDraws(t=torch.tensor([900, 37]), noise=torch.randn(b, 4, t_frames, *LATENT, generator=gen))
    prompts, batch = make_prompts(), make_batch(b, t_frames)
    z_leaf = z.clone().requires_grad_(True)
    out = guidance.loss_from_latents(z_leaf, prompts, batch, draws)
    out.losses["sds_video"].backward()

    # by hand: plain LDM noising, one UNet call on [z_t; z_t] with [cond; uncond], CFG anchored at cond,
    # motion amplification about the frame mean, weight 1 - ᾱ_t
    acp = ldm_alphas_cumprod()
    torch.testing.assert_close(guidance.alphas_cumprod, acp)
    a = acp[draws.t].reshape(b, 1, 1, 1, 1)
    z_t = a.sqrt() * z + (1 - a).sqrt() * draws.noise
    cond = torch.stack([prompts.cond_directional[1], prompts.cond_directional[0]])  # azimuth 0: front, 90: side
    uncond = torch.stack([prompts.uncond_directional[1], prompts.uncond_directional[0]])
    with torch.no_grad():
        eps = guidance.unet(torch.cat([z_t, z_t]), torch.cat([draws.t, draws.t]), torch.cat([cond, uncond]),
                            fps=torch.full((2 * b,), 8))  # fmt: skip
    eps_c, eps_u = eps[:b], eps[b:]
    score = eps_c + 100.0 * (eps_c - eps_u) - draws.noise
    mean = score.mean(dim=2, keepdim=True)
    g = (1 - a) * (mean + 30.0 * (score - mean))

    assert g.abs().max() > 0 and (eps_c - eps_u).abs().max() > 0  # a non-trivial network
    torch.testing.assert_close(z_leaf.grad, g / b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.losses["sds_video"], 0.5 * g.square().sum() / b, rtol=1e-5, atol=1e-3)
    assert float(out.stats["grad_norm"]) == pytest.approx(g.norm().item(), rel=1e-5)


def test_motion_amplification_scales_only_the_deviation_from_the_frame_mean(guidance):
    b, t_frames = 1, 6
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(b, 4, t_frames, *LATENT, generator=gen)
    t, noise = torch.tensor([500]), torch.randn(b, 4, t_frames, *LATENT, generator=gen)
    cond, uncond = make_prompts().get_text_embeddings(torch.tensor([10.0]), torch.tensor([0.0]), True)
    g1 = with_cfg(guidance, motion_amp_scale=1.0).latent_gradient(z, t, noise, cond, uncond)
    g30 = with_cfg(guidance, motion_amp_scale=30.0).latent_gradient(z, t, noise, cond, uncond)
    mean1, mean30 = g1.mean(dim=2, keepdim=True), g30.mean(dim=2, keepdim=True)
    torch.testing.assert_close(mean30, mean1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g30 - mean30, 30.0 * (g1 - mean1), rtol=1e-4, atol=1e-4)
    assert (g1 - mean1).abs().max() > 1e-3  # the frames differ, so the test can fail

    # the pure function on a hand-made score
    score = torch.tensor([1.0, 2.0, 6.0]).reshape(1, 1, 3, 1, 1)  # mean 3, deviations -2, -1, 3
    torch.testing.assert_close(vsv.motion_amplify(score, 10.0).flatten(), torch.tensor([-17.0, -7.0, 33.0]))
    torch.testing.assert_close(vsv.motion_amplify(score, 1.0), score)


@pytest.mark.parametrize("num_frames", [8, 16])
def test_clips_of_8_and_16_frames_run_with_their_own_frame_count(guidance, num_frames):
    calls, handle = record_unet_inputs(guidance)
    try:
        rgb = make_rgb(1, num_frames).requires_grad_(True)
        out = guidance(rgb, make_prompts(), make_batch(1, num_frames), generator=torch.Generator().manual_seed(1))
        out.losses["sds_video"].backward()
    finally:
        handle.remove()
    (args, kwargs), = calls
    assert args[0].shape == (2, 4, num_frames, *LATENT)  # [z_t; z_t] with the clip's T frames (4D-fy: always 16)
    assert kwargs["fps"].tolist() == [8, 8]
    assert torch.isfinite(out.losses["sds_video"]) and out.losses["sds_video"] > 0
    assert rgb.grad is not None and (rgb.grad.abs().sum(dim=(0, 2, 3, 4)) > 0).all()


@pytest.mark.parametrize("low_ram_vae, expected", [(1, 1), (3, 3), (-1, 6), (0, 6), (6, 6), (10, 6)])
def test_low_ram_vae_gives_gradients_to_exactly_k_frames(guidance, low_ram_vae, expected):
    with_cfg(guidance, low_ram_vae=low_ram_vae)
    counts = set()
    for seed in range(3):
        rgb = make_rgb(1, 6, seed=seed).requires_grad_(True)
        out = guidance(rgb, make_prompts(), make_batch(1, 6), generator=torch.Generator().manual_seed(seed))
        out.losses["sds_video"].backward()
        with_grad = rgb.grad.abs().sum(dim=(0, 2, 3, 4)) > 0
        assert int(with_grad.sum()) == expected
        counts.add(tuple(with_grad.tolist()))
    if 0 < low_ram_vae < 6:
        assert len(counts) > 1  # the frames are drawn anew per call


@pytest.mark.parametrize("low_ram_vae", [-1, 2])
def test_vae_checkpoint_gives_the_same_latents_and_gradients(guidance, low_ram_vae):
    assert guidance.cfg.vae_checkpoint  # the default
    weights = torch.randn(1, 4, 4, *LATENT, generator=torch.Generator().manual_seed(1))

    def encoder_and_encode(on: bool):
        with_cfg(guidance, low_ram_vae=low_ram_vae, vae_checkpoint=on)
        return guidance.vae.encoder, guidance.encode_frames

    grad_on, calls_on, calls_off = compare_vae_encodings(encoder_and_encode, make_rgb(1, 4), weights, seed=9)
    n_grad = 4 if low_ram_vae < 0 else 2
    assert int((grad_on.abs().sum(dim=(0, 2, 3, 4)) > 0).sum()) == n_grad
    # the gradient frames up to 4 per call (vae_checkpoint_frames), recomputed in backward; the others one by one
    assert sorted(calls_on) == sorted([n_grad] * 2 + [1] * (4 - n_grad))
    assert calls_off == [n_grad] + [1] * (4 - n_grad)


def test_forward_is_reproducible_with_a_generator_and_draws_follow_the_schedule(guidance):
    rgb, prompts, batch = make_rgb(1, 4), make_prompts(), make_batch(1, 4)
    a = guidance(rgb, prompts, batch, generator=torch.Generator().manual_seed(5)).losses["sds_video"]
    b = guidance(rgb, prompts, batch, generator=torch.Generator().manual_seed(5)).losses["sds_video"]
    torch.testing.assert_close(a, b)
    # _vc schedule: t in [20, 980] at step 0, max 500 from step 5000 on
    g = with_cfg(guidance, min_step_percent=[0, 0.02, 0.02, 5000], max_step_percent=[0, 0.98, 0.5, 5000])
    g.update_step(0, 0)
    assert (g.min_step, g.max_step) == (20, 980)
    g.update_step(0, 2500)
    assert g.min_step == 20 and abs(g.max_step - 740) <= 1
    g.update_step(0, 7000)
    assert (g.min_step, g.max_step) == (20, 500)
    draws = g.sample_draws(torch.zeros(2000, 1, 1, 1, 1), torch.Generator().manual_seed(0))
    assert draws.t.min() == 20 and draws.t.max() == 500
    g.update_step(0, 0)


def test_scale_arr_switch_changes_the_noising_as_defined(guidance):
    gen = torch.Generator().manual_seed(6)
    z = torch.randn(2, 4, 3, *LATENT, generator=gen)
    t, noise = torch.tensor([100, 700]), torch.randn(2, 4, 3, *LATENT, generator=gen)
    cond, uncond = make_prompts().get_text_embeddings(torch.zeros(2), torch.zeros(2), False)
    a = ldm_alphas_cumprod()[t].reshape(2, 1, 1, 1, 1)
    scale = torch.tensor([1.0 - 0.3 * 100 / 399, 0.7]).reshape(2, 1, 1, 1, 1)  # LVDM: linspace(1, 0.7, 400), then 0.7
    expected = {False: a.sqrt() * z + (1 - a).sqrt() * noise, True: a.sqrt() * scale * z + (1 - a).sqrt() * noise}
    seen = {}
    for switch in (False, True):
        calls, handle = record_unet_inputs(with_cfg(guidance, scale_arr_noising=switch))
        try:
            seen[switch] = guidance.latent_gradient(z, t, noise, cond, uncond)
        finally:
            handle.remove()
        z_in = calls[0][0][0]
        torch.testing.assert_close(z_in[:2], expected[switch], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(z_in[2:], expected[switch], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(seen[False], seen[True])


def test_precision_unet_under_trainer_autocast_vae_without(guidance):
    """4D-fy under 16-mixed: fp32 weights, UNet in the trainer's autocast, VAE encoding with autocast off."""
    dtypes = {}

    def recorder(name):
        def hook(module, inputs, output):  # returns None: the output is left alone
            dtypes.setdefault(name, output.dtype)

        return hook

    h1 = guidance.unet.input_blocks[0].register_forward_hook(recorder("unet"))
    h2 = guidance.vae.encoder.conv_in.register_forward_hook(recorder("vae"))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = guidance(make_rgb(1, 3), make_prompts(), make_batch(1, 3), generator=torch.Generator().manual_seed(0))
    finally:
        h1.remove()
        h2.remove()
    assert dtypes == {"unet": torch.bfloat16, "vae": torch.float32}
    assert next(guidance.unet.parameters()).dtype == torch.float32
    assert out.losses["sds_video"].dtype == torch.float32


# ----------------------------------------------------------------------------------------------------------------
# building, weights, config
# ----------------------------------------------------------------------------------------------------------------


def test_frozen_networks_never_train_nor_enter_checkpoints(guidance):
    assert not any(p.requires_grad for p in guidance.parameters())
    assert set(guidance.frozen_state_keys("")) == set(guidance.state_dict())
    guidance.train()
    assert not guidance.unet.training and not guidance.vae.training  # temporal-conv dropout stays off


def test_full_size_stand_in_is_vc2s_architecture(monkeypatch):
    import fourdfy.stand_ins.full_size as full_size
    from fourdfy import stand_ins

    monkeypatch.setattr(full_size, "build_device", lambda: torch.device("meta"))  # shapes only, no memory
    monkeypatch.setattr(full_size, "random_init_", lambda module, seed: module)
    unet, vae, acp = stand_ins.lookup("videocrafter", "random-init-videocrafter2")()
    assert sum(p.numel() for p in unet.parameters()) == 1_413_284_420  # guidance-models.md: 1413.28 M
    assert vae.config.latent_channels == 4 and vae.config.scaling_factor == 0.18215
    torch.testing.assert_close(acp, ldm_alphas_cumprod())


@pytest.mark.parametrize("value", ["/nonexistent/VideoCrafter2/model.ckpt", "VideoCrafter/VideoCrafter2", None])
def test_missing_weights_is_one_line_naming_the_key(value):
    with pytest.raises(MissingWeightsError) as e:
        VideoCrafterGuidance({"pretrained_model_name_or_path": value}, path="system.guidance_video")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("system.guidance_video.pretrained_model_name_or_path")
    assert "model.ckpt" in msg and "VideoCrafter/VideoCrafter2" in msg


def test_config_keys_of_4dfy_and_their_checks():
    path = "system.guidance_video"
    four_dfy = {
        "config": "threestudio/models/guidance/videocrafter/configs/inference_t2v_512_v2.0.yaml",
        "pretrained_model_name_or_path": "VideoCrafter/VideoCrafter2", "use_hifa": False, "width_vid": 128,
        "height_vid": 80, "motion_amp_scale": 30.0, "half_precision_weights": False, "fps": 8,
        "min_step_percent": [0, 0.02, 0.02, 5000], "max_step_percent": [0, 0.98, 0.5, 5000], "low_ram_vae": 2,
        "guidance_scale": 100.0, "weighting_strategy": "sds", "enable_memory_efficient_attention": True,
        "enable_sequential_cpu_offload": False, "enable_attention_slicing": False, "use_sjc": False, "var_red": True,
        "token_merging": False, "token_merging_params": {}, "grad_clip": None, "anneal_start_step": None,
    }  # fmt: skip
    cfg = validate("guidance", "videocrafter-guidance", four_dfy, path)
    assert cfg.frame_size == (320, 512) and cfg.fps == 8 and not cfg.scale_arr_noising
    for key, value, fragment in [
        ("config", "configs/inference_t2v_1024_v1.0.yaml", "inference_t2v_512_v2.0.yaml"),
        ("use_hifa", True, "HiFA"),
        ("use_sjc", True, "Jacobian"),
        ("frame_size", [320, 500], "multiples of 8"),
        ("weighting_strategy", "sjc", "not one of"),
        ("motion_amp", 30.0, "motion_amp_scale"),
    ]:
        with pytest.raises(ConfigError) as e:
            validate("guidance", "videocrafter-guidance", {**four_dfy, key: value}, path)
        assert f"{path}.{key}" in str(e.value) and fragment in str(e.value)


# ----------------------------------------------------------------------------------------------------------------
# the pure video pieces
# ----------------------------------------------------------------------------------------------------------------




def test_vae_channels_last_gives_the_same_latents_and_gradients(guidance):
    last = make_guidance(vae_channels_last=True)
    assert last.vae.encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    weights = torch.randn(1, 4, 4, *LATENT, generator=torch.Generator().manual_seed(1))
    guidances = {True: last, False: guidance}
    compare_vae_encodings(
        lambda flag: (guidances[flag].vae.encoder, guidances[flag].encode_frames), make_rgb(1, 4), weights, seed=9
    )


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_compiled_unet_gives_the_eager_noise_predictions(monkeypatch, device):
    """``compile_unet`` (CUDA only; on the CPU ``torch.compile`` is a recorder that returns the function, so this
    checks the wiring; on CUDA Inductor really compiles, with the suite's runtime shape checks off, since Dynamo's
    fake tensors fail beartype's checks of ``extern``'s annotations): the UNet call through the compiled function,
    inside the CUDA graph, predicts the eager noise (fp32); off (this guidance's default), nothing is compiled."""
    import jaxtyping

    from fourdfy.guidance import video_sds

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    recorded = passthrough_compile(monkeypatch) if device == "cpu" else None
    if device == "cuda":
        monkeypatch.setattr(jaxtyping.config, "jaxtyping_disable", True)
    monkeypatch.setattr(video_sds, "compiles_on", lambda d: True)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert make_guidance().cfg.compile_unet is False
    compiled = make_guidance(compile_unet=True).to(device)
    eager = make_guidance(cuda_graph=False).to(device)
    eager.load_state_dict(compiled.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(5)
    z_t = torch.randn(2, 4, 5, *LATENT, generator=gen).to(device)
    t = torch.tensor([37, 911], device=device)
    cond, uncond = (torch.randn(2, 77, 32, generator=gen).to(device) for _ in range(2))
    assert_compiled_unet_predicts_eager(compiled, eager, z_t, t, cond, uncond, recorded)
