"""Tiny random-weight MVDream and Stable Diffusion stand-ins (``tiny-random-4view``, ``tiny-random-sd-eps``,
``tiny-random-sd-v``): the real classes at a few channels, seeded so every process builds the same weights."""

from fourdfy.stand_ins.text import TINY_TEXT_DIM, seeded

TINY_UNET_CONFIG = dict(
    image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[1, 2],
    num_res_blocks=1, channel_mult=[1, 2], num_head_channels=16, use_spatial_transformer=True,
    use_linear_in_transformer=True, transformer_depth=1, context_dim=TINY_TEXT_DIM, use_checkpoint=False,
    legacy=False, camera_dim=16,
)  # fmt: skip
"""MVDream-architecture UNet of the tiny stand-in."""
TINY_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
    norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    sample_size=64, scaling_factor=0.18215,
)  # fmt: skip
"""KL-f8 VAE of every tiny stand-in (8x downsampling, 4 latent channels, like the real one)."""
TINY_SD_UNET_CONFIG = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=TINY_TEXT_DIM, attention_head_dim=8, norm_num_groups=8, use_linear_projection=True,
)  # fmt: skip
SD_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
)  # fmt: skip
"""Stable Diffusion's DDPM training schedule (stand-ins only; real models read theirs from disk)."""
SEEDS = {"mvdream": 4321, "sd-eps": 5101, "sd-v": 5102, "vae": 5103}


def tiny_vae(seed: int = SEEDS["vae"]):
    """The tiny KL-f8 VAE (diffusers ``AutoencoderKL``)."""
    from diffusers import AutoencoderKL

    with seeded(seed):
        return AutoencoderKL(**TINY_VAE_CONFIG)


def tiny_mvdream():
    """``tiny-random-4view``: MVDream-architecture UNet, the tiny VAE and the LDM ᾱ table."""
    from diffusers import AutoencoderKL

    from extern.ldm import alphas_cumprod
    from extern.mvdream import MultiViewUNetModel

    with seeded(SEEDS["mvdream"]):  # one seeded stream for both, as before the move (same smoke images)
        unet = MultiViewUNetModel(**TINY_UNET_CONFIG)
        vae = AutoencoderKL(**TINY_VAE_CONFIG)
    return unet, vae, alphas_cumprod()


def sd_scheduler(v_prediction: bool):
    """SD's DDPM schedule with the given prediction type."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SD_SCHEDULER_CONFIG, prediction_type="v_prediction" if v_prediction else "epsilon")


def _tiny_sd(v_prediction: bool, with_vae: bool):
    from diffusers import UNet2DConditionModel

    with seeded(SEEDS["sd-v" if v_prediction else "sd-eps"]):
        unet = UNet2DConditionModel(**TINY_SD_UNET_CONFIG, upcast_attention=v_prediction)
    return unet, sd_scheduler(v_prediction), tiny_vae() if with_vae else None


def tiny_sd_eps(with_vae: bool = True):
    """``tiny-random-sd-eps``: tiny SD-architecture UNet (eps), DDPM schedule and (optionally) the tiny VAE."""
    return _tiny_sd(False, with_vae)


def tiny_sd_v(with_vae: bool = True):
    """``tiny-random-sd-v``: the same with a v-prediction UNet (stand-in for SD 2.1 768-v)."""
    return _tiny_sd(True, with_vae)
