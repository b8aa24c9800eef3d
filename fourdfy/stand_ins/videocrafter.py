"""VideoCrafter2 stand-ins: ``tiny-random-videocrafter`` (seeded, a few channels; tests and smoke configs) and
``random-init-videocrafter2`` (the full-size architecture with random weights; speed and memory benchmarks).

Both are served to two families, because 4D-fy's ``_vc`` configs give the guidance and the prompt processor the same
``pretrained_model_name_or_path`` (one interpolates the other):

* ``videocrafter`` (``videocrafter-guidance``): ``() -> (unet, vae, alphas_cumprod)`` -- the LVDM 3D UNet
  (``extern.videocrafter.VideoCrafterUNetModel``), a KL-f8 VAE (diffusers ``AutoencoderKL``) and the LDM ᾱ table;
* ``text`` (``videocrafter-prompt-processor``): ``() -> (tokenize, encoder)`` -- a CLIP text model whose width is
  the UNet's ``context_dim`` (32 for the tiny one, the 23-layer 1024-wide OpenCLIP ViT-H tower for the full one).
"""

from fourdfy.stand_ins.text import TINY_TEXT_DIM, seeded

TINY_VIDEOCRAFTER_UNET_CONFIG = dict(
    in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[1, 2], num_res_blocks=1,
    channel_mult=[1, 2], num_head_channels=16, transformer_depth=1, context_dim=TINY_TEXT_DIM, use_linear=True,
    use_checkpoint=False, temporal_conv=True, temporal_attention=True, temporal_selfatt_only=True,
    use_relative_position=False, use_causal_attention=False, temporal_length=16, addition_attention=True,
    fps_cond=True,
)  # fmt: skip
"""VideoCrafter2's UNet (every temporal feature on) at width 32 and two levels: latents need even h and w."""
SEEDS = {"tiny-unet": 5201, "full-unet": 21, "full-vae": 22}


def tiny_videocrafter():
    """``tiny-random-videocrafter``: the tiny 3D UNet (eval mode), the tiny VAE and the LDM ᾱ table."""
    from extern.ldm import alphas_cumprod
    from extern.videocrafter import VideoCrafterUNetModel
    from fourdfy.stand_ins.tiny import tiny_vae

    with seeded(SEEDS["tiny-unet"]):
        unet = VideoCrafterUNetModel(**TINY_VIDEOCRAFTER_UNET_CONFIG)
    return unet.eval(), tiny_vae(), alphas_cumprod()


def random_videocrafter2():
    """``random-init-videocrafter2``: the full-size VideoCrafter2 UNet and VAE with random weights, and the ᾱ table."""
    from diffusers import AutoencoderKL

    from extern.ldm import alphas_cumprod, diffusers_vae_config
    from extern.ldm.vae import SD_VAE_EMBED_DIM, SD_VAE_SCALING_FACTOR
    from extern.videocrafter import VIDEOCRAFTER2_UNET_CONFIGS, VIDEOCRAFTER2_VAE_DDCONFIG, VideoCrafterUNetModel
    from fourdfy.stand_ins.full_size import build_on_device

    unet = build_on_device(lambda: VideoCrafterUNetModel(**VIDEOCRAFTER2_UNET_CONFIGS["t2v_512_v2"]),
                           SEEDS["full-unet"])  # fmt: skip
    vae_config = diffusers_vae_config(VIDEOCRAFTER2_VAE_DDCONFIG, SD_VAE_EMBED_DIM, SD_VAE_SCALING_FACTOR)
    vae = build_on_device(lambda: AutoencoderKL(**vae_config), SEEDS["full-vae"])
    return unet.eval(), vae.eval(), alphas_cumprod()


def tiny_videocrafter_text():
    """Text side of ``tiny-random-videocrafter``: the ``tiny-random-clip`` tokenizer and encoder (width 32)."""
    from fourdfy.stand_ins.text import tiny_clip

    return tiny_clip()


def random_videocrafter2_text():
    """Text side of ``random-init-videocrafter2``: the 23-layer ViT-H text tower with random weights (character
    tokenizer)."""
    from fourdfy.stand_ins.full_size import random_sd_text

    return random_sd_text()
