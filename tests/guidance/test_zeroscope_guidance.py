"""Tests of ``zeroscope-guidance`` (video SDS) and ``zeroscope-prompt-processor`` on the tiny random models (CPU).

Most tests shrink the guidance's ``video_size`` (ZeroScope's 320x576) to a few pixels so the tiny networks run in
milliseconds; ``test_frames_are_resized_to_320x576`` runs the real size once.
"""

import hashlib

import pytest
import torch
import torch.nn.functional as F

from fourdfy import stand_ins
from compiled_unet import assert_compiled_unet_predicts_eager, passthrough_compile
from vae_encodings import compare_vae_encodings
from fourdfy.config import ConfigError, parse_config
from fourdfy.data.batch import BatchKind
from fourdfy.data.random_camera import make_batch
from fourdfy.errors import USER_ERRORS, MissingWeightsError
from fourdfy.guidance import sds, video_sds
from fourdfy.guidance.zeroscope_guidance import VideoSDSDraws, ZeroscopeGuidance, load_zeroscope_components
from fourdfy.prompt_processors.base import PromptEmbeddings, embedding_cache_path
from fourdfy.prompt_processors.zeroscope_prompt_processor import ZeroscopePromptProcessor

TINY = "tiny-random-zeroscope"
SMALL = (16, 24)
"""A fast stand-in for ZeroScope's (320, 576): latents 2x3."""
KEY = "system.guidance_video.pretrained_model_name_or_path"


def make_guidance(small: bool = True, **overrides) -> ZeroscopeGuidance:
    guidance = ZeroscopeGuidance({"pretrained_model_name_or_path": TINY, **overrides})
    if small:
        guidance.video_size = SMALL
    return guidance


def make_prompts(d: int = 32, length: int = 7) -> PromptEmbeddings:
    g = torch.Generator().manual_seed(11)
    return PromptEmbeddings(
        cond=torch.randn(length, d, generator=g), uncond=torch.randn(length, d, generator=g),
        cond_directional=torch.randn(4, length, d, generator=g),
        uncond_directional=torch.randn(4, length, d, generator=g),
        front_threshold=45.0, back_threshold=45.0, overhead_threshold=60.0,
    )  # fmt: skip


def make_video_batch(b: int, t: int = 3, size: int = 8):
    """``b`` clips seen from the front (azimuth 0), the back (170) and the side (90)."""
    azimuth = torch.tensor([0.0, 170.0, 90.0][:b])
    return make_batch(torch.full((b,), 10.0), azimuth, torch.full((b,), 2.7), torch.full((b,), 40.0), size, size,
                      torch.linspace(0, 1, t), BatchKind.VIDEO)  # fmt: skip


def sd_alphas_cumprod() -> torch.Tensor:
    """The scaled-linear schedule (0.00085 -> 0.012, 1000 steps) of ZeroScope's DDIM scheduler, by hand."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


@pytest.fixture(scope="module")
def guidance() -> ZeroscopeGuidance:
    return make_guidance()


# ---------------------------------------------------------------------------------------------------------------
# the gradient
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("view_dependent", [True, False])
def test_latent_gradient_matches_hand_computation(guidance, view_dependent):
    b, t = 2, 3
    g = make_guidance(view_dependent_prompting=False) if not view_dependent else guidance
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(b, 4, t, 8, 8, generator=gen)
    draws = VideoSDSDraws(t=torch.tensor([37, 911]), noise=torch.randn(b, 4, t, 8, 8, generator=gen))
    prompts, batch = make_prompts(), make_video_batch(b, t)
    leaf = z.clone().requires_grad_(True)
    out = g.losses_from_latents(leaf, prompts, batch, draws)
    out.losses["sds_video"].backward()

    # by hand: the schedule, the noising, separate cond / uncond UNet calls, eps_c + 100 (eps_c - eps_u), 1 - ᾱ
    acp = sd_alphas_cumprod()
    torch.testing.assert_close(g.alphas_cumprod, acp)
    a = acp[draws.t].reshape(b, 1, 1, 1, 1)
    z_t = a.sqrt() * z + (1 - a).sqrt() * draws.noise
    if view_dependent:  # clip 0 is seen from the front (direction 1), clip 1 from the back (2)
        cond, uncond = prompts.cond_directional[[1, 2]], prompts.uncond_directional[[1, 2]]
    else:
        cond, uncond = prompts.cond.expand(b, -1, -1), prompts.uncond.expand(b, -1, -1)
    with torch.no_grad():
        eps_c = g.unet(z_t, draws.t, encoder_hidden_states=cond).sample
        eps_u = g.unet(z_t, draws.t, encoder_hidden_states=uncond).sample
    expected = (1 - a) * (eps_c + 100.0 * (eps_c - eps_u) - draws.noise)
    assert expected.abs().max() > 1.0  # a real signal, not a trivially small one
    torch.testing.assert_close(leaf.grad * b, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.losses["sds_video"], 0.5 * expected.square().sum() / b, rtol=1e-4, atol=1e-4)
    assert float(out.stats["grad_norm"]) == pytest.approx(expected.norm().item(), rel=1e-4)
    assert float(out.stats["timestep"]) == pytest.approx((37 + 911) / 2)


def test_weighting_strategies_and_grad_clip(guidance):
    gen = torch.Generator().manual_seed(4)
    z, noise = torch.randn(1, 4, 2, 4, 4, generator=gen), torch.randn(1, 4, 2, 4, 4, generator=gen)
    t = torch.tensor([600])
    cond, uncond = torch.randn(1, 7, 32, generator=gen), torch.randn(1, 7, 32, generator=gen)
    base = guidance.latent_gradient(z, t, noise, cond, uncond)
    a = guidance.alphas_cumprod[600]
    clipped = make_guidance(grad_clip=[0, 0.5, 0.05, 100])  # scheduled: 0.5 at step 0, 0.05 from step 100
    torch.testing.assert_close(clipped.latent_gradient(z, t, noise, cond, uncond), base.clamp(-0.5, 0.5))
    clipped.update_step(0, 100)
    torch.testing.assert_close(clipped.latent_gradient(z, t, noise, cond, uncond), base.clamp(-0.05, 0.05))
    uniform = make_guidance(weighting_strategy="uniform").latent_gradient(z, t, noise, cond, uncond)
    torch.testing.assert_close(uniform, base / (1 - a))
    torch.testing.assert_close(sds.timestep_weight(a[None], "fantasia3d"), (a.sqrt() * (1 - a))[None])
    with pytest.raises(ValueError, match="weighting strategy"):
        sds.timestep_weight(a[None], "sjc")


def test_forward_is_encode_then_draws_then_loss(guidance):
    prompts, batch = make_prompts(), make_video_batch(1)
    rgb = torch.rand(1, 3, 8, 12, 3, generator=torch.Generator().manual_seed(2))
    out = guidance(rgb, prompts, batch, generator=torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    z = guidance.encode_video(rgb, gen)
    draws = guidance.sample_draws(z, gen)
    again = guidance.losses_from_latents(z, prompts, batch, draws)
    torch.testing.assert_close(out.losses["sds_video"], again.losses["sds_video"], rtol=0, atol=0)
    assert set(out.losses) == {"sds_video"} and out.losses["sds_video"].dtype == torch.float32
    assert set(out.stats) == {"grad_norm", "timestep", "min_step", "max_step"}
    with pytest.raises(ValueError, match="2 clips but 1 cameras"):
        guidance(torch.rand(2, 3, 8, 12, 3), prompts, batch)


# ---------------------------------------------------------------------------------------------------------------
# frames: resize, layout, low_ram_vae
# ---------------------------------------------------------------------------------------------------------------


def test_frames_are_resized_to_320x576(guidance):
    full = make_guidance(small=False)
    assert full.video_size == (320, 576)
    seen = {}
    hooks = [
        full.vae.encoder.register_forward_pre_hook(lambda m, args: seen.setdefault("vae", []).append(args[0].shape)),
        full.unet.register_forward_pre_hook(lambda m, args: seen.setdefault("unet", args[0].shape) and None),
    ]
    prompts = ZeroscopePromptProcessor({"prompt": "a panda dancing", "pretrained_model_name_or_path": TINY,
                                        "spawn": False, "use_cache": False})()  # fmt: skip
    rgb = torch.rand(1, 2, 10, 18, 3, requires_grad=True)
    out = full(rgb, prompts, make_video_batch(1, 2), generator=torch.Generator().manual_seed(0))
    for h in hooks:
        h.remove()
    assert seen["vae"] == [(2, 3, 320, 576)]  # every frame, at 576x320 (up to vae_checkpoint_frames = 4 per call)
    assert seen["unet"] == (2, 4, 2, 40, 72)  # [cond; uncond] x 4 channels x 2 frames x 40x72 latents
    out.losses["sds_video"].backward()
    assert torch.isfinite(rgb.grad).all() and (rgb.grad.abs().sum(dim=(2, 3, 4)) > 0).all()


def test_frame_layout_and_interpolation_mode():
    rgb = torch.rand(2, 3, 5, 7, 3)
    x = video_sds.frames_to_bchw(rgb, (320, 576))
    assert x.shape == (6, 3, 320, 576)
    frame = rgb[1, 2].permute(2, 0, 1)[None]  # clip 1, frame 2 -> row 1 * 3 + 2
    ref = F.interpolate(frame, (320, 576), mode="bilinear", align_corners=False)
    torch.testing.assert_close(x[5:6], ref, rtol=0, atol=0)
    assert not torch.allclose(ref, F.interpolate(frame, (320, 576), mode="bilinear", align_corners=True))
    assert video_sds.frames_to_bchw(rgb, (5, 7)).data_ptr() == rgb.data_ptr()  # no resize at the right size
    z = torch.arange(6.0).reshape(6, 1, 1, 1).expand(6, 4, 2, 2)
    video = video_sds.frames_to_video(z, 2)
    assert video.shape == (2, 4, 3, 2, 2)
    assert video[1, :, 2].unique().tolist() == [5.0] and video[0, :, 1].unique().tolist() == [1.0]


def test_encode_video_routes_each_frame_to_its_latent(guidance):
    rgb = torch.rand(2, 3, 6, 8, 3, requires_grad=True)
    z = guidance.encode_video(rgb, torch.Generator().manual_seed(0))
    assert z.shape == (2, 4, 3, 2, 3) and z.dtype == torch.float32  # [B, C, T, h, w]
    z[1, :, 2].sum().backward()  # clip 1, frame 2 depends on that frame only
    has_grad = rgb.grad.abs().sum(dim=(2, 3, 4)) > 0
    assert has_grad.nonzero().tolist() == [[1, 2]]


@pytest.mark.parametrize("k, expected", [(1, 1), (3, 3), (-1, 4), (4, 4), (9, 4)])
def test_low_ram_vae_gives_gradient_to_exactly_k_frames_per_clip(k, expected):
    g = make_guidance(low_ram_vae=k)
    rgb = torch.rand(2, 4, 6, 8, 3, requires_grad=True)
    out = g(rgb, make_prompts(), make_video_batch(2, 4), generator=torch.Generator().manual_seed(k + 10))
    out.losses["sds_video"].backward()
    has_grad = rgb.grad.abs().sum(dim=(2, 3, 4)) > 0
    assert has_grad.sum(dim=1).tolist() == [expected, expected]


def test_grad_frames_are_a_uniform_random_subset():
    gen = torch.Generator().manual_seed(0)
    masks = torch.stack([video_sds.grad_frame_mask(1, 16, 4, torch.device("cpu"), gen)[0] for _ in range(2000)])
    assert (masks.sum(dim=1) == 4).all()
    freq = masks.float().mean(dim=0)
    assert ((freq - 0.25).abs() < 0.05).all()  # every frame equally likely (not the first k)
    assert video_sds.grad_frame_mask(3, 5, -1, torch.device("cpu")).all()


def test_encode_frames_keeps_order_and_detaches_the_rest():
    conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
    images = torch.randn(6, 3, 8, 8, requires_grad=True)
    mask = torch.tensor([False, True, False, False, True, False])
    z = video_sds.encode_frames(conv, images, mask)
    torch.testing.assert_close(z, conv(images))
    z.square().sum().backward()
    per_frame = images.grad.abs().sum(dim=(1, 2, 3))
    assert ((per_frame > 0) == mask).all()


@pytest.mark.parametrize("k", [-1, 2])
def test_vae_checkpoint_gives_the_same_latents_and_gradients(k):
    torch.manual_seed(0)
    on, off = make_guidance(low_ram_vae=k), make_guidance(low_ram_vae=k, vae_checkpoint=False)
    assert on.cfg.vae_checkpoint and not off.cfg.vae_checkpoint
    guidances = {True: on, False: off}
    grad_on, calls_on, calls_off = compare_vae_encodings(
        lambda flag: (guidances[flag].vae.encoder, guidances[flag].encode_video),
        torch.rand(2, 4, 6, 8, 3), torch.randn(2, 4, 4, 2, 3), seed=4,
    )
    assert int((grad_on.abs().sum(dim=(2, 3, 4)) > 0).sum()) == (8 if k < 0 else 4)
    n_grad = 8 if k < 0 else 4
    # on: the frames with gradient 4 per encoder call (vae_checkpoint_frames), encoded again in backward, the others
    # one per call without gradient; off: one call for the frames with gradient
    chunks = [4] * (n_grad // 4) + ([n_grad % 4] if n_grad % 4 else [])
    assert sorted(calls_on) == sorted(chunks * 2 + [1] * (8 - n_grad))
    assert calls_off == [n_grad] + [1] * (8 - n_grad)


# ---------------------------------------------------------------------------------------------------------------
# timesteps
# ---------------------------------------------------------------------------------------------------------------


def test_timesteps_stay_in_the_configured_range(guidance):
    z = torch.zeros(5000, 4, 1, 1, 1)
    t = guidance.sample_draws(z, torch.Generator().manual_seed(0)).t
    assert (guidance.min_step, guidance.max_step) == (20, 980)  # 4D-fy's [0.02, 0.98], never annealed
    assert int(t.min()) == 20 and int(t.max()) == 980
    guidance.update_step(0, 10**6)
    assert (guidance.min_step, guidance.max_step) == (20, 980)

    scheduled = make_guidance(min_step_percent=[0, 0.02, 0.3, 100], max_step_percent=0.5, anneal_start_step=200,
                              max_step_percent_annealed=0.4)  # fmt: skip
    expected = {0: (20, 500), 100: (300, 500), 200: (300, 500), 201: (300, 400)}
    for step, (lo, hi) in expected.items():
        scheduled.update_step(0, step)
        assert (scheduled.min_step, scheduled.max_step) == (lo, hi), step
        t = scheduled.sample_draws(z, torch.Generator().manual_seed(step)).t
        assert int(t.min()) == lo and int(t.max()) == hi
    scheduled.update_step(0, 0, on_load_weights=True)  # a function of the live step, not a one-way latch
    assert (scheduled.min_step, scheduled.max_step) == (20, 500)


# ---------------------------------------------------------------------------------------------------------------
# precision
# ---------------------------------------------------------------------------------------------------------------


def test_half_precision_plumbing_and_autocast_is_off(monkeypatch):
    from fourdfy.guidance import precision

    assert ZeroscopeGuidance.precision_network == "zeroscope"
    assert precision.resolve(make_guidance().cfg, "cuda", "zeroscope").dtype == torch.float16  # 4D-fy's fp16
    assert make_guidance().weights_dtype == torch.float32  # on CPU, even with half_precision_weights
    # what .to("cuda") does with half_precision_weights, simulated on CPU
    monkeypatch.setattr(ZeroscopeGuidance, "weights_dtype", property(lambda self: torch.float16))
    g = make_guidance().to("cpu")
    assert all(p.dtype == torch.float16 for m in (g.unet, g.vae) for p in m.parameters())
    prompts, batch = make_prompts(), make_video_batch(1)
    rgb = torch.rand(1, 3, 8, 12, 3, requires_grad=True)
    out = g(rgb, prompts, batch, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a 16-mixed trainer must not change the networks' dtype
        under_autocast = g(rgb, prompts, batch, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(under_autocast.losses["sds_video"], out.losses["sds_video"], rtol=0, atol=0)
    assert out.losses["sds_video"].dtype == torch.float32 and torch.isfinite(out.losses["sds_video"])
    out.losses["sds_video"].backward()
    assert rgb.grad.dtype == torch.float32 and rgb.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------------
# loading and configuration
# ---------------------------------------------------------------------------------------------------------------


def test_missing_local_folder_is_one_line_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = str(tmp_path / "no-such-zeroscope")
    with pytest.raises(MissingWeightsError) as info:
        ZeroscopeGuidance({"pretrained_model_name_or_path": missing})
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{KEY}: cannot load ZeroScope weights from {missing!r}")
    assert "no such local folder" in msg and "cerspense/zeroscope_v2_576w" in msg and "local diffusers folder" in msg
    assert isinstance(info.value, USER_ERRORS)
    # an (offline, uncached) hub id is reported the same way
    with pytest.raises(MissingWeightsError, match=rf"^{KEY}: cannot load ZeroScope weights from 'cerspense/zer"):
        ZeroscopeGuidance({"pretrained_model_name_or_path": "cerspense/zeroscope_v2_576w"})
    # a folder without the VAE names the missing part; the guidance's own path is used in messages
    unet, vae, scheduler = stand_ins.lookup("zeroscope", TINY)()
    unet.save_pretrained(tmp_path / "partial" / "unet")
    with pytest.raises(MissingWeightsError, match=r"^system\.guidance\.pretrained_model_name_or_path: .*\(vae/: "):
        ZeroscopeGuidance({"pretrained_model_name_or_path": str(tmp_path / "partial")}, path="system.guidance")


def test_local_diffusers_folder_loads_like_the_stand_in(tmp_path, guidance):
    unet, vae, scheduler = stand_ins.lookup("zeroscope", TINY)()
    for name, part in (("unet", unet), ("vae", vae), ("scheduler", scheduler)):
        part.save_pretrained(tmp_path / name)
    parts = load_zeroscope_components(str(tmp_path), KEY)
    assert type(parts.unet).__name__ == "UNet3DConditionModel" and type(parts.scheduler).__name__ == "DDIMScheduler"
    local = make_guidance(pretrained_model_name_or_path=str(tmp_path))
    ref = guidance.state_dict()
    assert set(local.state_dict()) == set(ref)
    assert all(torch.equal(v, ref[k]) for k, v in local.state_dict().items())
    torch.testing.assert_close(local.alphas_cumprod, guidance.alphas_cumprod, rtol=0, atol=0)
    assert not local.unet.training and not any(p.requires_grad for p in local.parameters())


def test_4dfy_guidance_video_sections_parse_unchanged():
    cls = ZeroscopeGuidance.Config
    path = "system.guidance_video"
    stage_3 = {"pretrained_model_name_or_path": "cerspense/zeroscope_v2_576w", "guidance_scale": 100.0,
               "weighting_strategy": "sds"}  # reference §3.3 (stages 1-2 carry the same section)
    cfg = parse_config(cls, stage_3, path)
    assert (cfg.guidance_scale, cfg.low_ram_vae, cfg.min_step_percent, cfg.max_step_percent) == (100.0, -1, 0.02, 0.98)
    assert cfg.half_precision_weights and cfg.view_dependent_prompting and cfg.anneal_start_step is None
    assert parse_config(cls, {**stage_3, "low_ram_vae": 4}, path).low_ram_vae == 4  # stage_3_low_vram
    readme = parse_config(cls, {**stage_3, "enable_memory_efficient_attention": True}, path)  # a README override
    assert readme.enable_memory_efficient_attention
    every_default = {
        "enable_memory_efficient_attention": False, "enable_sequential_cpu_offload": False,
        "enable_attention_slicing": False, "enable_channels_last_format": False, "grad_clip": None,
        "max_step_percent_annealed": 0.5, "anneal_start_step": None, "use_sjc": False, "var_red": True,
        "token_merging": False, "token_merging_params": {}, "half_precision_weights": True,
    }  # fmt: skip
    parse_config(cls, {**stage_3, **every_default}, path)
    assert ZeroscopeGuidance.registry_name == "zeroscope-guidance" and ZeroscopeGuidance.loss_names == ("sds_video",)


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("use_sjc", True, "use_sjc: only False"), ("var_red", False, "var_red: only True"),
        ("token_merging", True, "token_merging: only False"),
        ("token_merging_params", {"ratio": 0.5}, "token_merging_params: must be empty"),
        ("enable_sequential_cpu_offload", True, "enable_sequential_cpu_offload: only False"),
        ("enable_channels_last_format", True, "enable_channels_last_format: only False.*Conv3d"),
        ("low_ram_vae", 0, "low_ram_vae: 0"),
        ("low_ram_vae", -2, "low_ram_vae"), ("weighting_strategy", "sjc", "weighting_strategy"),
        ("guidance_scal", 100.0, "unknown key.*guidance_scale"),
    ],
)  # fmt: skip
def test_config_rejects_what_cannot_run(key, value, match):
    with pytest.raises(ConfigError, match=rf"system\.guidance_video\.{match}" if key != "guidance_scal" else match):
        parse_config(ZeroscopeGuidance.Config, {key: value}, "system.guidance_video")


def test_attention_slicing_keeps_the_result(guidance):
    sliced = make_guidance(enable_attention_slicing=True, enable_memory_efficient_attention=True)
    gen = torch.Generator().manual_seed(8)
    z, noise = torch.randn(1, 4, 2, 4, 4, generator=gen), torch.randn(1, 4, 2, 4, 4, generator=gen)
    cond, uncond = torch.randn(1, 7, 32, generator=gen), torch.randn(1, 7, 32, generator=gen)
    t = torch.tensor([300])
    torch.testing.assert_close(sliced.latent_gradient(z, t, noise, cond, uncond),
                               guidance.latent_gradient(z, t, noise, cond, uncond), rtol=1e-4, atol=1e-4)  # fmt: skip
    with pytest.raises(ConfigError, match="width 32 but the video prompt embeddings have width 16"):
        guidance.losses_from_latents(z, make_prompts(d=16), make_video_batch(1, 2), VideoSDSDraws(t, noise))


def test_stand_ins():
    from diffusers import UNet3DConditionModel

    from fourdfy.stand_ins.video import ZEROSCOPE_UNET_CONFIG, random_zeroscope, tiny_zeroscope, zeroscope_scheduler

    with torch.device("meta"):
        unet = UNet3DConditionModel(**ZEROSCOPE_UNET_CONFIG)
    assert sum(p.numel() for p in unet.parameters()) == 1_411_233_860  # guidance-models.md §3: 1 411.23 M
    assert len(unet.state_dict()) == 1480 and unet.config.cross_attention_dim == 1024
    torch.testing.assert_close(zeroscope_scheduler().alphas_cumprod, sd_alphas_cumprod())
    assert stand_ins.lookup("zeroscope", TINY) is tiny_zeroscope
    assert stand_ins.lookup("zeroscope", "random-init-zeroscope-v2-576w") is random_zeroscope
    assert stand_ins.lookup("zeroscope", "cerspense/zeroscope_v2_576w") is None
    assert stand_ins.lookup("text", TINY) is not None and stand_ins.is_stand_in("random-init-zeroscope-v2-576w")
    a, b = tiny_zeroscope()[0], tiny_zeroscope()[0]  # seeded: identical in every process
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ---------------------------------------------------------------------------------------------------------------
# the prompt processor (reference §9.5)
# ---------------------------------------------------------------------------------------------------------------


def test_prompt_processor_matches_4dfy(tmp_path, monkeypatch):
    monkeypatch.setenv("FOURDFY_CACHE_DIR", str(tmp_path / "cache"))
    proc = ZeroscopePromptProcessor({"prompt": "a panda dancing", "pretrained_model_name_or_path": TINY,
                                     "spawn": False}, path="system.prompt_processor_video")  # fmt: skip
    emb = proc()
    assert (proc.cfg.negative_prompt, emb.front_threshold, emb.back_threshold, emb.overhead_threshold) == (
        "", 45.0, 45.0, 60.0)  # fmt: skip
    assert emb.cond.shape == (77, 32) and emb.cond_directional.shape == (4, 77, 32)
    # 4D-fy's cache file: md5 of "{model}-{prompt}"; the negative prompt is the empty string
    digest = hashlib.md5(f"{TINY}-a panda dancing, front view".encode()).hexdigest()
    cached = embedding_cache_path(TINY, "a panda dancing, front view")
    assert cached.name == f"{digest}.pt" and cached.is_file()
    torch.testing.assert_close(torch.load(cached, weights_only=True), emb.cond_directional[1])
    torch.testing.assert_close(emb.uncond, torch.load(embedding_cache_path(TINY, ""), weights_only=True))


def test_prompt_processor_missing_weights_point_at_zeroscope(tmp_path, monkeypatch):
    monkeypatch.setenv("FOURDFY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = str(tmp_path / "no-such-zeroscope")
    with pytest.raises(MissingWeightsError) as info:
        ZeroscopePromptProcessor({"prompt": "a cat", "pretrained_model_name_or_path": missing, "spawn": False},
                                 path="system.prompt_processor_video")  # fmt: skip
    msg = str(info.value)
    assert msg.startswith("system.prompt_processor_video.pretrained_model_name_or_path: ") and "\n" not in msg
    assert "cerspense/zeroscope_v2_576w" in msg and "stable-diffusion" not in msg


def test_vae_checkpoint_frames_sets_the_frames_per_encoder_call():
    g = make_guidance(vae_checkpoint_frames=3)
    assert g.cfg.checkpoint_frames() == 3 and make_guidance(vae_checkpoint=False).cfg.checkpoint_frames() == 0
    calls = []
    hook = g.vae.encoder.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    rgb = torch.rand(2, 4, 6, 8, 3, requires_grad=True)
    g.encode_video(rgb, torch.Generator().manual_seed(0)).sum().backward()
    hook.remove()
    assert sorted(calls) == [2, 2, 3, 3, 3, 3]  # 8 frames as 3 + 3 + 2, each recomputed once in backward
    with pytest.raises(ConfigError, match="vae_checkpoint_frames"):
        make_guidance(vae_checkpoint_frames=0)


def test_vae_channels_last_gives_the_same_latents_and_gradients():
    last, plain = make_guidance(low_ram_vae=-1, vae_channels_last=True), make_guidance(low_ram_vae=-1)
    conv = last.vae.encoder.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert plain.vae.encoder.conv_in.weight.is_contiguous()
    guidances = {True: last, False: plain}
    compare_vae_encodings(
        lambda flag: (guidances[flag].vae.encoder, guidances[flag].encode_video),
        torch.rand(2, 4, 6, 8, 3, generator=torch.Generator().manual_seed(3)), torch.randn(2, 4, 4, 2, 3), seed=4,
    )


def test_vae_checkpoint_memory_fraction_skips_the_recompute_where_the_activations_fit(monkeypatch):
    """With ``vae_checkpoint_memory_fraction`` the guidance asks the device for room (patched here: the CPU has no
    measure): room for the 8 frames' activations -> one encoder call and no recompute; no room -> checkpointed."""
    from fourdfy.utils import device_memory

    g = make_guidance(vae_checkpoint_frames=3, vae_checkpoint_memory_fraction=0.5)
    h, w = g.video_size
    need = video_sds.vae_activation_bytes(8, h, w, g.cfg.vae_checkpoint_bytes_per_pixel, g.weights_dtype.itemsize)
    for available, expected in ((2 * need, [8]), (2 * need - 1, [2, 2, 3, 3, 3, 3])):
        monkeypatch.setattr(device_memory, "available_device_memory", lambda device, a=available: a)
        calls = []
        hook = g.vae.encoder.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
        g.encode_video(torch.rand(2, 4, 6, 8, 3, requires_grad=True), torch.Generator().manual_seed(0)).sum().backward()
        hook.remove()
        assert sorted(calls) == expected


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_compiled_vae_encoder_gives_the_eager_latents_and_gradients(monkeypatch, device):
    """``compile_vae_encoder`` (CUDA only; patched to compile on the CPU too): ``quant_conv(compiled encoder(x))``
    gives the latents and frame gradients of ``vae.encode``, under the checkpointed encoding's recompute too (fp32
    weights on both devices); a tiled VAE stays eager; the compiled wrapper stays out of the state dict."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    monkeypatch.setattr(video_sds, "compiles_on", lambda d: True)
    # on CUDA, TF32 convolutions (cuDNN's default) would round differently for the layouts Inductor picks: compare
    # in full fp32 (TF32 matmuls are off by default)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    settings = {"low_ram_vae": -1, "half_precision_weights": False}
    compiled = make_guidance(**settings).to(device)
    eager = make_guidance(compile_vae_encoder=False, **settings).to(device)
    eager.load_state_dict(compiled.state_dict(), strict=True)
    guidances = {True: compiled, False: eager}
    frames = torch.rand(2, 4, 6, 8, 3, generator=torch.Generator().manual_seed(3)).to(device)

    def encode(flag):
        g = guidances[flag]
        return g.vae.encoder, lambda rgb, gen: g.encode_video(rgb, torch.Generator(device).manual_seed(4))

    grad, _, _ = compare_vae_encodings(
        encode, frames, torch.randn(2, 4, 4, 2, 3).to(device), seed=4,
        grad_atol=1e-4, z_atol=1e-5,  # Inductor's fused GroupNorm sums in another order (1.6e-5 seen on a CPU)
    )
    assert float(grad.abs().sum()) > 0
    moments = compiled._vae_moments
    assert moments._compiled is not None and eager._vae_moments._compiled is None
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    x = torch.rand(1, 3, 16, 24, device=device)
    assert moments.compiled_for(x)
    compiled.vae.enable_tiling()
    assert not moments.compiled_for(x)  # diffusers' tiled encode is not what the compiled path computes


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_compiled_unet_gives_the_eager_noise_predictions(monkeypatch, device):
    """``compile_unet`` (CUDA only; on the CPU ``torch.compile`` is a recorder, so this checks the wiring; on CUDA
    Inductor really compiles): the UNet call through the compiled function, inside the CUDA graph, predicts the
    eager noise (fp32); off, nothing is compiled; the compiled function stays out of the state dict."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    recorded = passthrough_compile(monkeypatch) if device == "cpu" else None
    monkeypatch.setattr(video_sds, "compiles_on", lambda d: True)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    settings = {"half_precision_weights": False}
    compiled = make_guidance(**settings).to(device)
    eager = make_guidance(compile_unet=False, cuda_graph=False, **settings).to(device)
    eager.load_state_dict(compiled.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(5)
    z_t = torch.randn(2, 4, 3, 8, 8, generator=gen).to(device)
    t = torch.tensor([37, 911], device=device)
    cond, uncond = (torch.randn(2, 7, 32, generator=gen).to(device) for _ in range(2))
    assert_compiled_unet_predicts_eager(compiled, eager, z_t, t, cond, uncond, recorded)
