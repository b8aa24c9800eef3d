"""Full-size networks with random weights, selected by reserved names: for speed and memory benchmarks where the
real checkpoints cannot be downloaded (the benchmark machines have no network).

Reserved names (the architecture is the real one; only the weights are random):

- ``random-init-sd-v2.1-base-4view`` (``model_name`` of the multi-view guidance): MVDream's UNet and the SD VAE;
- ``random-init-sd-2-1-base`` / ``random-init-sd-2-1`` (VSD ``pretrained_model_name_or_path[_lora]``): the SD 2.1
  UNet (eps, 512 px) / (v-prediction, 768 px) and the SD VAE;
- ``random-init-sd-2-1-text`` (prompt processor): the 23-layer SD 2.x CLIP text encoder (character tokenizer).

Modules are built on the CUDA device when one is available (fast, no CPU copy); parameters are drawn as
``N(0, 1/fan_in)`` for weights (ones for norm scales, zeros for biases), so activations stay O(1).
"""

import torch
from torch import nn

SD21_UNET_CONFIG = dict(
    in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True, norm_num_groups=32,
)  # fmt: skip
"""The SD 2.1 UNet (both models; ``sample_size`` 64 for base, 96 for the 768-v model)."""


def build_device() -> torch.device:
    """Where random full-size networks are created."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


NORM_TYPES = (nn.GroupNorm, nn.LayerNorm, nn.modules.batchnorm._NormBase)


@torch.no_grad()
def random_init_(module: nn.Module, seed: int) -> nn.Module:
    """Fill every parameter in place: norm layers get scale 1 and shift 0; other weights of dim >= 2 get
    ``N(0, 1/fan_in)``; other 1-D parameters (biases) get 0."""
    g = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    for sub in module.modules():
        is_norm = isinstance(sub, NORM_TYPES)
        for name, p in sub.named_parameters(recurse=False):
            if is_norm:
                p.fill_(1.0 if name == "weight" else 0.0)
            elif p.dim() >= 2:
                p.normal_(0.0, p[0].numel() ** -0.5, generator=g)
            else:
                p.zero_()
    return module


def build_on_device(factory, seed: int) -> nn.Module:
    """Construct directly on :func:`build_device` (no CPU copy) and fill with random weights."""
    with torch.device(build_device()):
        module = factory()
    return random_init_(module, seed)


def random_mvdream() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """Full-size MVDream UNet and SD VAE with random weights, and the LDM ᾱ table."""
    from diffusers import AutoencoderKL

    from extern.ldm import alphas_cumprod, diffusers_vae_config
    from extern.mvdream import MVDREAM_UNET_CONFIGS, MultiViewUNetModel

    unet = build_on_device(lambda: MultiViewUNetModel(**MVDREAM_UNET_CONFIGS["sd-v2.1-base-4view"]), 11)
    vae = build_on_device(lambda: AutoencoderKL(**diffusers_vae_config()), 12)
    return unet, vae, alphas_cumprod()


def random_sd_unet(v_prediction: bool) -> nn.Module:
    """The SD 2.1 UNet (base eps model, or the 768-v model) with random weights."""
    from diffusers import UNet2DConditionModel

    cfg = dict(SD21_UNET_CONFIG, sample_size=96 if v_prediction else 64, upcast_attention=v_prediction)
    return build_on_device(lambda: UNet2DConditionModel(**cfg), 13 if v_prediction else 14)


def random_sd_vae() -> nn.Module:
    """The SD KL-f8 VAE with random weights."""
    from diffusers import AutoencoderKL

    from extern.ldm import diffusers_vae_config

    return build_on_device(lambda: AutoencoderKL(**diffusers_vae_config()), 15)


def random_sd_text_encoder() -> nn.Module:
    """The 23-layer SD 2.x CLIP text encoder with random weights."""
    from transformers import CLIPTextModel

    from extern.ldm import sd2_text_encoder_config

    return build_on_device(lambda: CLIPTextModel(sd2_text_encoder_config()), 16).eval()


def _random_sd(v_prediction: bool, with_vae: bool):
    from fourdfy.stand_ins.tiny import sd_scheduler

    return random_sd_unet(v_prediction), sd_scheduler(v_prediction), random_sd_vae() if with_vae else None


def random_sd_base(with_vae: bool = True):
    """``random-init-sd-2-1-base``: SD 2.1-base UNet (eps), DDPM schedule and (optionally) the VAE."""
    return _random_sd(False, with_vae)


def random_sd_v(with_vae: bool = True):
    """``random-init-sd-2-1``: SD 2.1 768-v UNet (v-prediction), DDPM schedule and (optionally) the VAE."""
    return _random_sd(True, with_vae)


def random_sd_text():
    """``random-init-sd-2-1-text``: the character tokenizer and the 23-layer SD 2.x text encoder."""
    from fourdfy.stand_ins.text import TinyCharTokenizer

    return TinyCharTokenizer(), random_sd_text_encoder()
