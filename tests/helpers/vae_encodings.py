"""The VAE-encoding comparison both video guidances' tests make (ZeroScope, VideoCrafter2): a setting on and off
(checkpointing, memory layout) must give the same latents and frame gradients."""

from collections.abc import Callable

import torch
from torch import Tensor, nn


def compare_vae_encodings(
    encoder_and_encode: Callable[[bool], tuple[nn.Module, Callable[[Tensor, torch.Generator], Tensor]]],
    frames: Tensor, weights: Tensor, seed: int, grad_atol: float = 1e-5, z_atol: float = 1e-6,
) -> tuple[Tensor, list[int], list[int]]:  # fmt: skip
    """Encode ``frames`` with a setting on and then off (``encoder_and_encode(on)`` gives the guidance's VAE encoder
    module and its encode function, seeded with ``seed`` each time), assert that the latents and the frames'
    gradients of ``(z * weights).sum()`` agree, and return the gradient and the encoder's batch size per call, on and
    off. ``grad_atol``, ``z_atol``: the gradients' and latents' absolute tolerances (a compiled encoder reorders its
    reductions)."""
    results = []
    for on in (True, False):
        encoder, encode = encoder_and_encode(on)
        batches: list[int] = []
        hook = encoder.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
        rgb = frames.clone().requires_grad_(True)
        try:
            z = encode(rgb, torch.Generator().manual_seed(seed))
            (z * weights).sum().backward()
        finally:
            hook.remove()
        results.append((z.detach(), rgb.grad, batches))
    (z_on, grad_on, calls_on), (z_off, grad_off, calls_off) = results
    torch.testing.assert_close(z_on, z_off, atol=z_atol, rtol=1e-5)
    # a few frames per call vs all frames in one call: the same math, but convolution kernels may sum in another
    # order for another batch size (seen on a 16-core machine: 2.4e-6 on gradients of size ~1e-2)
    torch.testing.assert_close(grad_on, grad_off, atol=grad_atol, rtol=1e-4)
    return grad_on, calls_on, calls_off
