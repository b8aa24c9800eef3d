"""Random-weight ZeroScope stand-ins (family ``zeroscope``): diffusers ``UNet3DConditionModel``, the SD KL-f8 VAE and
ZeroScope's DDIM schedule, with random weights.

- ``tiny-random-zeroscope``: a seeded two-level UNet3D of a few channels whose text width is
  :data:`~fourdfy.stand_ins.text.TINY_TEXT_DIM` (so ``tiny-random-clip`` embeddings fit), and the tiny VAE of
  :mod:`fourdfy.stand_ins.tiny`; smoke configs and tests.
- ``random-init-zeroscope-v2-576w``: ZeroScope v2 576w's UNet3D at full size (1 411.23 M parameters) and the SD VAE,
  ``N(0, 1/fan_in)`` weights (:func:`fourdfy.stand_ins.full_size.random_init_`); speed and memory benchmarks.

Builders return ``(unet, vae, scheduler)``, all in fp32 (the guidance casts the networks when it is moved).
"""

from fourdfy.stand_ins.text import TINY_TEXT_DIM, seeded

ZEROSCOPE_UNET_CONFIG = dict(
    sample_size=32, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
    down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
    cross_attention_dim=1024, attention_head_dim=64, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
    downsample_padding=1, mid_block_scale_factor=1,
)  # fmt: skip
"""``cerspense/zeroscope_v2_576w``'s ``unet/config.json`` (the ModelScope-T2V family; guidance-models.md §3).
diffusers' naming quirk: ``attention_head_dim=64`` is read as 64 "heads", and each block then builds ch/64 heads of
dimension 64, which is the real layout."""

TINY_ZEROSCOPE_UNET_CONFIG = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
    down_block_types=("DownBlock3D", "CrossAttnDownBlock3D"), up_block_types=("CrossAttnUpBlock3D", "UpBlock3D"),
    cross_attention_dim=TINY_TEXT_DIM, attention_head_dim=8, norm_num_groups=8,
)  # fmt: skip
"""The tiny stand-in's UNet3D. Spatial attention sits only at the lower level (and in the mid block): ZeroScope has
it at every level but the last, which at the 40x72 latents of a 576x320 video makes a CPU call seconds long."""

ZEROSCOPE_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
    set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
)  # fmt: skip
"""ZeroScope's ``scheduler/scheduler_config.json`` (``DDIMScheduler``); only its ᾱ table is used."""

SEEDS = {"tiny-unet": 6101, "full-unet": 17}


def zeroscope_scheduler():
    """ZeroScope's DDIM schedule (diffusers ``DDIMScheduler``)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**ZEROSCOPE_SCHEDULER_CONFIG)


def tiny_zeroscope():
    """``tiny-random-zeroscope``: the tiny seeded UNet3D, the tiny VAE and ZeroScope's schedule."""
    from diffusers import UNet3DConditionModel

    from fourdfy.stand_ins.tiny import tiny_vae

    with seeded(SEEDS["tiny-unet"]):
        unet = UNet3DConditionModel(**TINY_ZEROSCOPE_UNET_CONFIG)
    return unet, tiny_vae(), zeroscope_scheduler()


def random_zeroscope():
    """``random-init-zeroscope-v2-576w``: ZeroScope's full-size UNet3D and the SD VAE with random weights (built on
    the GPU when there is one), and ZeroScope's schedule."""
    from diffusers import UNet3DConditionModel

    from fourdfy.stand_ins.full_size import build_on_device, random_sd_vae

    unet = build_on_device(lambda: UNet3DConditionModel(**ZEROSCOPE_UNET_CONFIG), SEEDS["full-unet"])
    return unet, random_sd_vae(), zeroscope_scheduler()
