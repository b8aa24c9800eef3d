"""Video score-distillation helpers: frame layout and per-frame encoding with a gradient budget, as pure functions.

Shared by the video guidances (ZeroScope now, VideoCrafter2 later). Layouts:

- renders arrive clip-major as ``[B, T, H, W, 3]`` (``B`` clips of ``T`` frames, values in [0, 1]);
- the image encoder sees frames as a batch ``[B*T, 3, h, w]`` (clip-major: frame ``j`` of clip ``i`` is row
  ``i*T + j``);
- video UNets take latents as ``[B, C, T, h', w']`` (diffusers' ``UNet3DConditionModel`` and LVDM's layout).

The SDS math itself (noising, CFG, weights, the target-form loss) is in :mod:`fourdfy.guidance.sds`.
"""

from collections.abc import Callable
from typing import Optional

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor


def frames_to_bchw(rgb: Float[Tensor, "B T H W 3"], size: tuple[int, int]) -> Float[Tensor, "BT 3 h w"]:
    """Frames of ``B`` clips as one channels-first batch, bilinearly resized to ``size`` = (height, width)
    (``align_corners=False``, no antialiasing, as 4D-fy); values kept in [0, 1]."""
    b, t, h, w, _ = rgb.shape
    x = rgb.reshape(b * t, h, w, 3).permute(0, 3, 1, 2)
    if (h, w) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return x


def grad_frame_mask(
    b: int, t: int, k: int, device: torch.device, generator: Optional[torch.Generator] = None
) -> Bool[Tensor, "B T"]:
    """Which frames are encoded with gradient: ``k`` frames per clip chosen uniformly at random (a random subset,
    not a contiguous run); all frames when ``k < 0`` or ``k >= t``.

    Example:
        ``grad_frame_mask(1, 16, 4, dev)`` has exactly four True entries, at random positions.
    """
    if k < 0 or k >= t:
        return torch.ones(b, t, dtype=torch.bool, device=device)
    ranks = torch.rand(b, t, device=device, generator=generator).argsort(dim=1).argsort(dim=1)
    return ranks < k


def encode_frames(
    encode: Callable[[Tensor], Tensor], images: Float[Tensor, "N 3 h w"], with_grad: Bool[Tensor, "N"]
) -> Float[Tensor, "N C h2 w2"]:
    """Encode frames; only the rows where ``with_grad`` holds are differentiable.

    The frames with gradient are encoded in one call; the others one frame per call under ``no_grad`` (4D-fy's
    ``low_ram_vae``: the activation memory of the frames without gradient is never held for more than one frame).
    The result is in the input order.

    Args:
        encode: images ``[n, 3, h, w]`` -> latents ``[n, C, h2, w2]`` (any ``n`` >= 1).
        images: the frames.
        with_grad: per-frame flag.
    """
    if bool(with_grad.all()):
        return encode(images)
    idx_grad = with_grad.nonzero().flatten()
    idx_rest = (~with_grad).nonzero().flatten()
    parts = [encode(images[idx_grad])] if idx_grad.numel() > 0 else []
    with torch.no_grad():
        parts += [encode(images[i : i + 1]) for i in idx_rest.tolist()]
    order = torch.cat([idx_grad, idx_rest])
    return torch.cat(parts)[order.argsort()]


def frames_to_video(z: Float[Tensor, "BT C h w"], b: int) -> Float[Tensor, "B C T h w"]:
    """Per-frame latents (clip-major) to the video layout ``[B, C, T, h, w]``."""
    bt, c, h, w = z.shape
    return z.reshape(b, bt // b, c, h, w).permute(0, 2, 1, 3, 4)
