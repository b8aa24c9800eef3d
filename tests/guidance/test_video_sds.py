"""``video_sds.encode_frames`` with activation checkpointing: the same latents and input gradients as one call, the
random posterior draw made once outside the checkpoints, the encoder recomputed frame by frame in backward."""

import pytest
import torch

from fourdfy.guidance import video_sds


class CountingEncoder(torch.nn.Module):
    """A small conv encoder to moments ``[mean; logvar]`` that records the batch size of every call and whether
    autograd was on."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.calls: list[tuple[int, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.shape[0], torch.is_grad_enabled()))
        return self.conv2(torch.nn.functional.silu(self.conv1(x)))


def sampler(seed: int):
    gen = torch.Generator().manual_seed(seed)
    return gen, lambda m: video_sds.vae_posterior_sample(m, 0.18215, gen)


@pytest.mark.parametrize("chunk", [1, 2, 5])
@pytest.mark.parametrize("mask", [[True] * 5, [False, True, False, True, True]], ids=["all", "three"])
def test_checkpointed_encoding_matches_one_call_forward_and_backward(chunk, mask):
    enc = CountingEncoder()
    with_grad = torch.tensor(mask)
    images = torch.randn(5, 3, 16, 16)
    weights = torch.randn(5, 4, 4, 4)
    results = []
    for frames in (0, chunk):
        x = images.clone().requires_grad_(True)
        gen, sample = sampler(7)
        z = video_sds.encode_frames(enc, x, with_grad, sample, checkpoint_frames=frames)
        (z * weights).sum().backward()
        results.append((z.detach(), x.grad, gen.get_state()))
    (z_ref, g_ref, state_ref), (z, g, state) = results
    assert z.shape == (5, 4, 4, 4)
    torch.testing.assert_close(z, z_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=1e-5)
    assert torch.equal(state, state_ref)  # the generator drew the same numbers, once
    assert ((g.abs().sum(dim=(1, 2, 3)) > 0) == with_grad).all()


def test_checkpointed_encoding_recomputes_chunk_by_chunk_in_backward():
    enc = CountingEncoder()
    x = torch.randn(5, 3, 16, 16, requires_grad=True)
    with_grad = torch.tensor([True, True, False, True, True])
    _, sample = sampler(0)
    z = video_sds.encode_frames(enc, x, with_grad, sample, checkpoint_frames=2)
    # the four frames with gradient as 2 + 2 (checkpointed), then the frame without gradient alone under no_grad
    assert enc.calls == [(2, True), (2, True), (1, False)]
    enc.calls.clear()
    z.sum().backward()
    assert sorted(enc.calls) == [(2, True), (2, True)]  # recomputed one chunk at a time
    enc.calls.clear()
    video_sds.encode_frames(enc, x, with_grad, sample, checkpoint_frames=0).sum().backward()
    assert enc.calls == [(4, True), (1, False)]  # one call with autograd, nothing recomputed


def saved_numel(fn):
    """``fn()`` and the number of elements autograd saved for backward outside any checkpoint while it ran."""
    total = [0]

    def pack(t):
        total[0] += t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total[0]


def test_checkpointed_encoding_keeps_no_encoder_activations():
    enc = CountingEncoder()
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    with_grad = torch.ones(4, dtype=torch.bool)
    _, sample = sampler(0)
    _, plain = saved_numel(lambda: video_sds.encode_frames(enc, x, with_grad, sample, checkpoint_frames=0))
    _, ckpt = saved_numel(lambda: video_sds.encode_frames(enc, x, with_grad, sample, checkpoint_frames=1))
    # plain: the input frames and both conv activations (4 * (3*32*32 + 2 * 8*16*16) elements) plus the weights
    assert plain > 4 * (3 * 32 * 32 + 2 * 8 * 16 * 16)
    # checkpointed: the input frames (to recompute from) and the posterior sample's 4x8x8 tensors only
    assert ckpt <= x.numel() + 4 * 4 * (4 * 8 * 8)


def test_no_checkpointing_without_autograd():
    enc = CountingEncoder()
    _, sample = sampler(0)
    with torch.no_grad():
        z = video_sds.encode_frames(enc, torch.randn(3, 3, 16, 16), torch.ones(3, dtype=torch.bool), sample, 1)
    assert enc.calls == [(3, False)] and z.shape == (3, 4, 4, 4)


def test_posterior_sample_is_mean_plus_std_times_noise():
    mean, logvar = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    logvar[0, 0, 0, 0] = 50.0  # clamped to 20
    z = video_sds.vae_posterior_sample(torch.cat([mean, logvar], dim=1), 0.5, torch.Generator().manual_seed(3))
    eps = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(z, 0.5 * (mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * eps))


def test_all_frames_is_decided_on_the_host_and_matches_the_mask():
    """``with_grad=None`` (every frame, decided from ``low_ram_vae`` without reading a mask back) encodes exactly as
    an all-True mask, and the host rule agrees with :func:`grad_frame_mask`."""
    for t, k in [(4, -1), (4, 4), (4, 9), (4, 2), (4, 1)]:
        mask = video_sds.grad_frame_mask(1, t, k, torch.device("cpu"), torch.Generator().manual_seed(0))
        assert video_sds.all_frames_with_grad(t, k) == bool(mask.all())
        flags = video_sds.frame_grad_flags(1, t, k, torch.device("cpu"), torch.Generator().manual_seed(0))
        assert (flags is None) == bool(mask.all())
        if flags is not None:
            assert torch.equal(flags, mask.reshape(-1))
    images = torch.rand(3, 3, 8, 8, requires_grad=True)
    weight = torch.randn(3, 3, 8, 8)
    encode = lambda x: x * weight[: x.shape[0]] if x.shape[0] == 3 else x  # noqa: E731
    a = video_sds.encode_frames(encode, images, None)
    b = video_sds.encode_frames(encode, images, torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    (ga,) = torch.autograd.grad(a.sum(), images)
    torch.testing.assert_close(ga, weight, rtol=0, atol=0)


def test_vae_activation_bytes_follows_its_docstring_example():
    assert video_sds.vae_activation_bytes(16, 320, 576, 6000, 2) == 17_694_720_000
    assert video_sds.vae_activation_bytes(16, 320, 576, 6000, 4) == 2 * 17_694_720_000  # fp32 counts twice


def test_grad_frame_count_follows_low_ram_vae():
    assert video_sds.grad_frame_count(1, 16, 4) == 4
    assert video_sds.grad_frame_count(2, 16, -1) == 32
    assert video_sds.grad_frame_count(2, 16, 16) == 32  # k >= T: every frame


def test_checkpoint_frames_skip_only_where_the_activations_fit(monkeypatch):
    """``vae_checkpoint_memory_fraction``: 0 keeps ``vae_checkpoint``; f > 0 (default 0.5) drops checkpointing only when the
    estimate fits in f of the available memory; a CPU (nothing measured) and ``vae_checkpoint: false`` are kept."""
    from fourdfy.utils import device_memory

    cuda = torch.device("cuda")
    need = video_sds.vae_activation_bytes(16, 320, 576, 6000, 2)
    cfg = video_sds.VaeEncoderConfig(vae_checkpoint_frames=4, vae_checkpoint_memory_fraction=0.0)
    monkeypatch.setattr(device_memory, "available_device_memory", lambda device: 4 * need)
    assert video_sds.checkpoint_frames_for(cfg, 16, 320, 576, 2, cuda) == 4  # fraction 0: as configured
    cfg = video_sds.VaeEncoderConfig(vae_checkpoint_frames=4, vae_checkpoint_memory_fraction=0.5)
    assert video_sds.checkpoint_frames_for(cfg, 16, 320, 576, 2, cuda) == 0  # 1/4 of the memory <= 1/2: fits
    assert video_sds.checkpoint_frames_for(cfg, 16, 320, 576, 4, cuda) == 0  # fp32: 1/2 <= 1/2, still fits
    assert video_sds.checkpoint_frames_for(cfg, 33, 320, 576, 4, cuda) == 4  # just over: checkpoint
    monkeypatch.setattr(device_memory, "available_device_memory", lambda device: None)  # a CPU
    assert video_sds.checkpoint_frames_for(cfg, 1, 8, 8, 2, torch.device("cpu")) == 4
    off = video_sds.VaeEncoderConfig(vae_checkpoint=False, vae_checkpoint_memory_fraction=0.5)
    assert video_sds.checkpoint_frames_for(off, 16, 320, 576, 2, cuda) == 0


def test_fits_in_available_memory_needs_a_fraction_and_a_measured_device(monkeypatch):
    from fourdfy.utils import device_memory

    monkeypatch.setattr(device_memory, "available_device_memory", lambda device: 1000)
    assert device_memory.fits_in_available_memory(500, torch.device("cuda"), 0.5)
    assert not device_memory.fits_in_available_memory(501, torch.device("cuda"), 0.5)
    assert not device_memory.fits_in_available_memory(1, torch.device("cuda"), 0.0)
    monkeypatch.setattr(device_memory, "available_device_memory", lambda device: None)  # not measurable
    assert not device_memory.fits_in_available_memory(1, torch.device("cpu"), 1.0)
