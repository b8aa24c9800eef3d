"""Video score-distillation helpers: frame layout and per-frame encoding with a gradient budget, as pure functions.

Shared by the video guidances (ZeroScope now, VideoCrafter2 later). Layouts:

- renders arrive clip-major as ``[B, T, H, W, 3]`` (``B`` clips of ``T`` frames, values in [0, 1]);
- the image encoder sees frames as a batch ``[B*T, 3, h, w]`` (clip-major: frame ``j`` of clip ``i`` is row
  ``i*T + j``);
- video UNets take latents as ``[B, C, T, h', w']`` (diffusers' ``UNet3DConditionModel`` and LVDM's layout).

The SDS math itself (noising, CFG, weights, the target-form loss) is in :mod:`fourdfy.guidance.sds`.
"""

import dataclasses
from collections.abc import Callable
from typing import Optional, TypeVar

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from jaxtyping import Bool, Float
from torch import Tensor

from fourdfy.config import ranged
from fourdfy.utils.device_memory import fits_in_available_memory


@dataclasses.dataclass
class VaeEncoderConfig:
    """The VAE-encoder keys both video guidances share (their ``Config`` classes inherit them)."""

    vae_checkpoint: bool = True
    """Encode the frames with gradient ``vae_checkpoint_frames`` at a time under activation checkpointing: the
    VAE encoder's activations are held for that many frames at a time (recomputed in backward; the posterior
    sample is drawn once, outside, so the latents are the same); false: all frames with gradient in one call,
    activations kept."""
    vae_checkpoint_frames: int = ranged(4, ge=1)
    """Frames per checkpointed encoder call. Fewer frames hold less memory but run the encoder at a smaller
    batch: ZeroScope's 16 frames at 576x320 took 150-190 ms one per call, 92 ms four per call and 76 ms in one
    call (H200, fp16; ``benchmarks/results/iteration_stage_3_*``)."""

    vae_channels_last: bool = False
    """Run the VAE encoder in the channels-last memory layout (weights and frames): cuDNN's half-precision
    convolutions work in it natively instead of transposing every activation to it and back. Same values up to the
    convolutions' summation order. Off until measured on a GPU (``benchmarks/vae_encoder.py`` times both layouts)."""

    vae_checkpoint_memory_fraction: float = ranged(0.5, ge=0.0, le=1.0)
    """``f > 0`` (default 0.5; with ``vae_checkpoint``): on a CUDA device, the frames with gradient are encoded in
    one call with their activations kept when the estimate of those activations (:func:`vae_activation_bytes`) is at
    most ``f`` of the memory PyTorch can still use there: a large card skips the encoder's recompute in backward, a
    small one still checkpoints. 0: ``vae_checkpoint`` alone decides. Measured in one call on an H200 (ZeroScope
    stage 3, random field): video steps 0.590 -> 0.448 s, stage 3 0.331 -> 0.271 s/it (peak 14.4 -> 25.9 GiB);
    under a 22 GiB cap it checkpoints as before (14.4 GiB)."""
    vae_checkpoint_bytes_per_pixel: int = ranged(6000, ge=1)
    """Activation bytes the encoder keeps per input pixel of a frame encoded with gradient and without
    checkpointing, at 2-byte precision (fp32 weights count twice), for ``vae_checkpoint_memory_fraction``."""

    compile_vae_encoder: bool = True
    """On CUDA, run the VAE encoder through ``torch.compile`` (Inductor, static shapes: one compilation per input
    shape and grad mode, some 35 s each on an H200, in the first video steps); false: eager, as 4D-fy. The same
    computation up to fp16 rounding: Inductor fuses the GroupNorm / SiLU / residual element-wise work around cuDNN's
    convolutions. ``benchmarks/vae_encoder.py --compile off on`` (session 11 call A, H200, ZeroScope's 16 frames at
    320x576, fp16, every frame with gradient): forward 62.5 -> 34.9 ms, forward + backward 137.6 -> 114.1 ms, peak
    16.8 -> 11.8 GiB; in the training loop, same call, on against off: ``fourdfy_stage_3`` 0.192 against 0.197 s/it
    (call B), ``fourdfy_stage_3_vc`` (its VAE in fp32) 0.199 against 0.225 (call C)."""

    def checkpoint_frames(self) -> int:
        """Frames per checkpointed encoder call (0: no checkpointing)."""
        return self.vae_checkpoint_frames if self.vae_checkpoint else 0


@dataclasses.dataclass
class VideoUnetConfig:
    """The UNet keys both video guidances share (their ``Config`` classes inherit them)."""

    compile_unet: bool = True
    """On CUDA, run the video UNet's no-grad forward through ``torch.compile`` (Inductor, static shapes: one
    compilation per input shape and autocast state, some 110 s for ZeroScope's at 4D-fy's shape on an H200, in the
    first video step), inside the CUDA graph when ``cuda_graph`` is on; false: eager, as 4D-fy. The same computation
    up to fp16 rounding (relative L2 difference 2.6e-3 for ZeroScope's UNet in fp16): Inductor fuses the GroupNorm,
    SiLU, residual and layout work between the convolutions, matmuls and attention. ``python
    benchmarks/zeroscope_unet.py --compile`` (session 12 call A, H200, x [2,4,16,40,72], fp16): eager 146.2 ms, CUDA
    graph 139.3, compiled 100.2, compiled in the CUDA graph 97.0."""


def compiles_on(device: torch.device) -> bool:
    """Whether ``compile_vae_encoder`` and ``compile_unet`` compile on ``device`` (CUDA only: on a CPU, Inductor's C++ build would
    cost more than it saves in the small runs made there; tests patch this to compare the two paths)."""
    return device.type == "cuda"


class CompiledCall:
    """``fn(*tensors)`` through ``torch.compile`` (static shapes) when ``enabled`` and :func:`compiles_on` the
    first tensor's device, else ``fn`` itself. Compiled on the first such call; the compiled function lives in this
    plain object, outside the module tree, so state dicts do not change. A :class:`GraphedForward
    <fourdfy.guidance.cuda_graph.GraphedForward>` around it captures the compiled kernels in its CUDA graph."""

    def __init__(self, fn: Callable[..., Tensor], enabled: bool) -> None:
        self.fn = fn
        self.enabled = enabled
        self._compiled: Optional[Callable[..., Tensor]] = None

    def compiled_for(self, x: Tensor) -> bool:
        """Whether a call whose first tensor is ``x`` runs compiled."""
        return self.enabled and compiles_on(x.device)

    def __call__(self, *tensors: Tensor) -> Tensor:
        if not self.compiled_for(tensors[0]):
            return self.fn(*tensors)
        if self._compiled is None:
            self._compiled = torch.compile(self.fn, dynamic=False)
        return self._compiled(*tensors)


class VaeMoments:
    """``vae.encode(x).latent_dist.parameters`` (the posterior's ``[mean; logvar]``), with ``vae.encoder``
    through ``torch.compile`` when ``compile_encoder`` holds and :func:`compiles_on` the input's device: then
    ``quant_conv(encoder(x))``, what diffusers' ``AutoencoderKL._encode`` computes without tiling or slicing (a VAE
    with either on stays eager). The compiled wrapper lives in this plain object, outside the module tree, so state
    dicts do not change."""

    def __init__(self, vae: torch.nn.Module, compile_encoder: bool) -> None:
        self.vae = vae
        self.compile_encoder = compile_encoder
        self._compiled: Optional[Callable[[Tensor], Tensor]] = None

    def compiled_for(self, x: Tensor) -> bool:
        """Whether a call on ``x`` runs the compiled encoder."""
        vae = self.vae
        tiled_or_sliced = bool(getattr(vae, "use_tiling", False) or getattr(vae, "use_slicing", False))
        return self.compile_encoder and compiles_on(x.device) and not tiled_or_sliced

    def __call__(self, x: Float[Tensor, "N 3 h w"]) -> Float[Tensor, "N C2 h2 w2"]:
        if not self.compiled_for(x):
            return self.vae.encode(x).latent_dist.parameters
        if self._compiled is None:
            self._compiled = torch.compile(self.vae.encoder, dynamic=False)
        h = self._compiled(x)
        return h if self.vae.quant_conv is None else self.vae.quant_conv(h)


def vae_activation_bytes(n_frames: int, height: int, width: int, bytes_per_pixel: int, itemsize: int) -> int:
    """Estimated activations the VAE encoder keeps for backward when ``n_frames`` frames of ``height x width`` are
    encoded with gradient in one call: ``n_frames * height * width * bytes_per_pixel * itemsize / 2``
    (``bytes_per_pixel`` is given at 2-byte precision).

    Example: ZeroScope's 16 frames at 320x576 in fp16 at 6000 bytes per pixel: 17.7 GB."""
    return n_frames * height * width * bytes_per_pixel * itemsize // 2


def checkpoint_frames_for(
    cfg: VaeEncoderConfig, n_grad_frames: int, height: int, width: int, itemsize: int, device: torch.device
) -> int:
    """Frames per checkpointed encoder call for this call (0: none): ``cfg.checkpoint_frames()``, unless
    ``vae_checkpoint_memory_fraction`` is set and the activations of the ``n_grad_frames`` frames with gradient
    (:func:`vae_activation_bytes`) fit in that fraction of the memory PyTorch can still use on ``device``
    (:func:`~fourdfy.utils.device_memory.fits_in_available_memory`; never on a CPU)."""
    frames = cfg.checkpoint_frames()
    if frames == 0 or cfg.vae_checkpoint_memory_fraction <= 0 or n_grad_frames == 0:
        return frames
    need = vae_activation_bytes(n_grad_frames, height, width, cfg.vae_checkpoint_bytes_per_pixel, itemsize)
    return 0 if fits_in_available_memory(need, device, cfg.vae_checkpoint_memory_fraction) else frames


def grad_frame_count(b: int, t: int, k: int) -> int:
    """Frames encoded with gradient for ``B`` clips of ``T`` frames and ``low_ram_vae = k`` (:func:`grad_frame_mask`).

    Example: ``grad_frame_count(1, 16, 4)`` is 4; ``grad_frame_count(2, 16, -1)`` is 32."""
    return b * t if all_frames_with_grad(t, k) else b * k


T = TypeVar("T", Tensor, torch.nn.Module)


def in_layout(x: T, cfg: VaeEncoderConfig) -> T:
    """The VAE (or a batch of frames for it) in the encoder's memory layout: channels-last with
    ``vae_channels_last``, else ``x`` untouched."""
    if not cfg.vae_channels_last:
        return x
    return x.to(memory_format=torch.channels_last)


def frames_to_bchw(rgb: Float[Tensor, "B T H W 3"], size: tuple[int, int]) -> Float[Tensor, "BT 3 h w"]:
    """Frames of ``B`` clips as one channels-first batch, bilinearly resized to ``size`` = (height, width)
    (``align_corners=False``, no antialiasing, as 4D-fy); values kept in [0, 1]."""
    b, t, h, w, _ = rgb.shape
    x = rgb.reshape(b * t, h, w, 3).permute(0, 3, 1, 2)
    if (h, w) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return x


def all_frames_with_grad(t: int, k: int) -> bool:
    """Whether ``low_ram_vae = k`` gives every one of ``t`` frames a gradient (``k < 0`` or ``k >= t``), decided on
    the host: :func:`grad_frame_mask` is then all True and draws nothing."""
    return k < 0 or k >= t


def grad_frame_mask(
    b: int, t: int, k: int, device: torch.device, generator: Optional[torch.Generator] = None
) -> Bool[Tensor, "B T"]:
    """Which frames are encoded with gradient: ``k`` frames per clip chosen uniformly at random (a random subset,
    not a contiguous run); all frames when ``k < 0`` or ``k >= t``.

    Example:
        ``grad_frame_mask(1, 16, 4, dev)`` has exactly four True entries, at random positions.
    """
    if all_frames_with_grad(t, k):
        return torch.ones(b, t, dtype=torch.bool, device=device)
    ranks = torch.rand(b, t, device=device, generator=generator).argsort(dim=1).argsort(dim=1)
    return ranks < k


def frame_grad_flags(
    b: int, t: int, k: int, device: torch.device, generator: Optional[torch.Generator] = None
) -> Optional[Bool[Tensor, "BT"]]:
    """The ``with_grad`` argument of :func:`encode_frames` for ``B`` clips of ``T`` frames and ``low_ram_vae = k``:
    ``None`` when every frame has a gradient (decided on the host, so nothing is read back from the device), else
    :func:`grad_frame_mask` flattened clip-major."""
    if all_frames_with_grad(t, k):
        return None
    return grad_frame_mask(b, t, k, device, generator).reshape(-1)


def encode_frames(
    encode: Callable[[Tensor], Tensor],
    images: Float[Tensor, "N 3 h w"],
    with_grad: Optional[Bool[Tensor, "N"]],
    sample: Optional[Callable[[Tensor], Tensor]] = None,
    checkpoint_frames: int = 0,
) -> Float[Tensor, "N C h2 w2"]:
    """Encode frames, ``latents = sample(encode(images))``; only the rows where ``with_grad`` holds are
    differentiable. The result is in the input order.

    The frames without gradient are encoded one frame per call under ``no_grad`` (4D-fy's ``low_ram_vae``: their
    activation memory is never held for more than one frame). The frames with gradient are encoded in one call, or,
    with ``checkpoint_frames = k > 0`` and autograd on, ``k`` frames per call, each call under activation
    checkpointing (``torch.utils.checkpoint``, non-reentrant): the encoder's activations are kept for no frame
    after its forward and are recomputed ``k`` frames at a time in backward. ``sample`` then runs once on all the
    gradient frames' encodings, outside the checkpoints, so a random draw there (the VAE posterior's noise) is
    drawn once, in the same shape and order as without checkpointing; ``encode`` must be deterministic (it runs
    again in backward).

    Args:
        encode: images ``[n, 3, h, w]`` -> per-frame encodings (any ``n`` >= 1): the latents themselves, or the
            VAE posterior's parameters when ``sample`` turns them into latents.
        images: the frames.
        with_grad: per-frame flag; None: every frame (known on the host, so no device-to-host read is needed).
        sample: encodings of ``n`` frames -> latents ``[n, C, h2, w2]``; None: the encodings are the latents.
        checkpoint_frames: frames per checkpointed ``encode`` call for the frames with gradient; 0: no checkpointing.
    """
    if sample is None:
        sample = _identity
    grad = torch.is_grad_enabled()

    def encode_with_grad(x: Tensor) -> Tensor:
        if checkpoint_frames <= 0 or not grad:
            return sample(encode(x))
        parts = [
            torch.utils.checkpoint.checkpoint(encode, chunk, use_reentrant=False)
            for chunk in x.split(checkpoint_frames)
        ]
        return sample(torch.cat(parts))

    if with_grad is None or bool(with_grad.all()):  # the second test reads the mask back (a host sync)
        return encode_with_grad(images)
    idx_grad = with_grad.nonzero().flatten()
    idx_rest = (~with_grad).nonzero().flatten()
    parts = [encode_with_grad(images[idx_grad])] if idx_grad.numel() > 0 else []
    with torch.no_grad():
        parts += [sample(encode(images[i : i + 1])) for i in idx_rest.tolist()]
    order = torch.cat([idx_grad, idx_rest])
    return torch.cat(parts)[order.argsort()]


def _identity(x: Tensor) -> Tensor:
    return x


def vae_posterior_sample(
    moments: Float[Tensor, "N C2 h w"], scaling_factor: float, generator: Optional[torch.Generator] = None
) -> Float[Tensor, "N C h w"]:
    """Latents ``scaling_factor * (mean + std * eps)`` (fp32) from the VAE posterior's parameters ``moments =
    [mean; logvar]`` on the channel axis (``AutoencoderKL.encode(x).latent_dist.parameters``), with diffusers'
    ``DiagonalGaussianDistribution`` (``logvar`` clamped to [-30, 20], ``eps ~ N(0, 1)`` drawn from ``generator``
    in the moments' dtype, one draw of the whole batch)."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    return (DiagonalGaussianDistribution(moments).sample(generator=generator) * scaling_factor).float()


def frames_to_video(z: Float[Tensor, "BT C h w"], b: int) -> Float[Tensor, "B C T h w"]:
    """Per-frame latents (clip-major) to the video layout ``[B, C, T, h, w]``."""
    bt, c, h, w = z.shape
    return z.reshape(b, bt // b, c, h, w).permute(0, 2, 1, 3, 4)
