"""The reserved full-size random-weight networks used by the GPU benchmarks: real architectures, sane init."""

import torch
from torch import nn

from fourdfy.stand_ins.full_size import SD21_UNET_CONFIG, random_init_


def test_sd21_unet_config_is_full_size():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD21_UNET_CONFIG, sample_size=64)
    n = sum(p.numel() for p in unet.parameters())
    assert n == 865_910_724  # SD 2.1 UNet (guidance-models.md: 865.91 M)
    assert unet.config.cross_attention_dim == 1024


def test_random_init_statistics():
    m = nn.Sequential(nn.Linear(256, 512), nn.LayerNorm(512), nn.Linear(512, 8))
    random_init_(m, seed=0)
    w = m[0].weight.detach()
    assert abs(float(w.std()) - 256**-0.5) < 0.1 * 256**-0.5
    assert float(m[0].bias.detach().abs().max()) == 0.0 and float((m[1].weight.detach() - 1).abs().max()) == 0.0
    x = torch.randn(64, 256)
    assert 0.3 < float(m(x).detach().std()) < 3.0  # activations stay O(1)
