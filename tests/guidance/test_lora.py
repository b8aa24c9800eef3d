"""Tests of our LoRA for diffusers attention (fourdfy.guidance.lora)."""

import copy

import pytest
import torch
from diffusers import UNet2DConditionModel

from fourdfy.guidance.lora import LORA_TARGETS, LoRAAdapter, LoRALinear, inject_lora, lora_delta

TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8, use_linear_projection=True,
)  # fmt: skip
SD21_UNET = dict(
    sample_size=96, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True, upcast_attention=True,
)  # fmt: skip
SD21_LORA_PARAMS = 829_952
"""Rank 4 on q/k/v/out of SD 2.x's 32 attention modules: sum over the 16 transformer blocks of width C of
4 * (8C + 8C) (self-attention) + 4 * (2C + 2C) + 2 * 4 * (1024 + C) (cross-attention) = 56 * sum(C) + 16 * 8192,
with sum(C) = 5 * 320 + 5 * 640 + 6 * 1280 = 12480."""


def tiny_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(**TINY_UNET).eval().requires_grad_(False)


def unet_inputs(b: int = 2):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(b, 4, 8, 8, generator=g)
    t = torch.tensor([10, 700][:b])
    text = torch.randn(b, 7, 32, generator=g)
    return z, t, text


def randomize_up(layers, seed: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in layers.adapters().values():
            adapter.lora_up.copy_(torch.randn(adapter.lora_up.shape, generator=g) * 0.1)


def test_zero_init_matches_base_and_state_dict_is_unchanged():
    base = tiny_unet()
    unet = copy.deepcopy(base)
    keys_before = {k: v.clone() for k, v in unet.state_dict().items()}
    layers = inject_lora(unet, rank=4)
    z, t, text = unet_inputs()
    assert torch.equal(unet(z, t, text).sample, base(z, t, text).sample)
    # the UNet's own state dict is the pretrained one: same keys, same values, no LoRA tensor
    after = unet.state_dict()
    assert set(after) == set(keys_before)
    assert all(torch.equal(after[k], keys_before[k]) for k in after)
    assert not any("lora" in k for k in after)
    # 4 attention modules x 2 (attn1, attn2) x 4 projections in the tiny UNet
    assert len(layers.adapters()) == 4 * 2 * 4
    sd = layers.state_dict()
    down = sd["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_down"]
    up = sd["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0.lora_up"]
    assert down.shape == (4, 32) and up.shape == (32, 4)
    assert all(torch.count_nonzero(v) == 0 for k, v in sd.items() if k.endswith("lora_up"))


def test_gradient_reaches_only_lora_params():
    unet = tiny_unet()
    layers = inject_lora(unet, rank=4)
    randomize_up(layers)  # so that lora_down gets a non-zero gradient too
    z, t, text = unet_inputs()
    unet(z, t, text).sample.square().mean().backward()
    assert all(p.grad is None and not p.requires_grad for p in unet.parameters())
    for name, p in layers.named_parameters():
        assert p.requires_grad and p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
    # the container holds exactly the adapters, the UNet none of them
    lora_ids = {id(p) for p in layers.parameters()}
    assert not lora_ids & {id(p) for p in unet.parameters()}


def test_scale_zero_reproduces_base_and_is_restored():
    base = tiny_unet()
    unet = copy.deepcopy(base)
    layers = inject_lora(unet)
    randomize_up(layers)
    z, t, text = unet_inputs()
    ref = base(z, t, text).sample
    assert not torch.allclose(unet(z, t, text).sample, ref, atol=1e-4)
    with layers.scaled(0.0):
        assert torch.equal(unet(z, t, text).sample, ref)
    assert all(a.scale == 1.0 for a in layers.adapters().values())
    with pytest.raises(RuntimeError):
        with layers.scaled(0.5):
            raise RuntimeError("boom")
    assert all(a.scale == 1.0 for a in layers.adapters().values())


def test_lora_linear_formula_and_dtypes():
    torch.manual_seed(3)
    base = torch.nn.Linear(16, 8)
    adapter = LoRAAdapter(16, 8, rank=4)
    torch.nn.init.normal_(adapter.lora_up)
    layer = LoRALinear(base, adapter)
    assert layer.weight is base.weight and not layer.weight.requires_grad
    assert "adapter" not in dict(layer.named_children())
    x = torch.randn(3, 5, 16)
    adapter.scale = 0.7
    expected = base(x) + 0.7 * (x @ adapter.lora_down.T @ adapter.lora_up.T)
    torch.testing.assert_close(layer(x), expected)
    # bf16 base next to an fp32 adapter: output in the activations' dtype
    layer.to(torch.bfloat16)
    adapter.float()
    y = layer(x.bfloat16())
    assert y.dtype == torch.bfloat16 and adapter.lora_down.dtype == torch.float32
    assert lora_delta(x.bfloat16(), adapter.lora_down, adapter.lora_up).dtype == torch.bfloat16


def test_adapter_init_statistics():
    torch.manual_seed(4)
    adapter = LoRAAdapter(1024, 1024, rank=4)
    assert adapter.lora_down.shape == (4, 1024) and adapter.lora_up.shape == (1024, 4)
    assert torch.count_nonzero(adapter.lora_up) == 0
    assert abs(adapter.lora_down.std().item() - 0.25) < 0.01  # std = 1 / rank
    assert abs(adapter.lora_down.mean().item()) < 0.01
    with pytest.raises(ValueError, match="rank"):
        LoRAAdapter(8, 2, rank=4)


def test_sd21_lora_parameter_count_on_meta_device():
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD21_UNET)
        layers = inject_lora(unet, rank=4)
    adapters = layers.adapters()
    assert len(adapters) == 32 * len(LORA_TARGETS)
    assert sum(p.numel() for p in layers.parameters()) == SD21_LORA_PARAMS
    key = "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_v.lora_down"
    assert layers.state_dict()[key].shape == (4, 1024)
    assert "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0" in adapters


def test_double_injection_fails():
    unet = tiny_unet()
    inject_lora(unet)
    with pytest.raises(ValueError, match="already carries"):
        inject_lora(unet)
