"""Numeric precision of the frozen diffusion networks: one policy for every guidance.

Two config keys of a guidance decide it:

``weights_dtype: auto | fp32 | tf32 | fp16 | bf16``
    ``fp32``: fp32 weights, strict IEEE fp32 matmuls *and* convolutions inside the frozen networks;
    ``tf32``: fp32 weights, TensorFloat-32 matmuls and convolutions (Ampere and later);
    ``fp16`` / ``bf16``: weights, activations and VAE backward in that dtype;
    ``auto``: the per-network default of :data:`NETWORK_DEFAULTS` (see below).
``half_precision_weights`` (4D-fy's key)
    ``false`` means full precision: ``auto`` resolves to ``fp32``; an explicit ``fp16``/``bf16`` with it is a
    config error (the two keys would contradict each other).

Off CUDA (the CPU tests, a CPU run) every frozen network runs in fp32 whatever the keys say: CPU half kernels are
slow or missing, and CPU runs only check the machinery.

The numbers the guidance computes *around* the networks (CFG, x0 reconstruction, the SDS weight, the loss) are
always fp32: network outputs are cast up before use. Trainable parts held by a guidance (VSD's LoRA and camera
MLP) keep their fp32 parameters; LoRA's matmuls run in the dtype of the activations they see.

What 4D-fy ran (reference-4dfy.md §15.1): under ``trainer.precision: 32`` MVDream's UNet and VAE in fp32 (its
``half_precision_weights`` was never read), the VSD networks and ZeroScope with fp16 weights; under the
``16-mixed`` stage-3 configs MVDream's and VideoCrafter's UNet calls in fp16 autocast on fp32 weights.
``benchmarks/precision.py`` measures, per network and dtype, how far the SDS gradient on the latents (and the VAE
encoder's backward) lands from fp32, whether anything overflows, and what a call costs; the defaults below are
chosen from it (the README's "Precision" section has the table).
"""

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any, Optional, Union

import torch

from fourdfy.config import ConfigError

WEIGHTS_DTYPES = ("auto", "fp32", "tf32", "fp16", "bf16")
"""Values of the ``weights_dtype`` config key."""

NETWORK_DEFAULTS: dict[str, str] = {
    "mvdream": "fp16",
    "sd": "fp16",
    "zeroscope": "fp16",
    "videocrafter": "fp16",
}
"""``auto`` per network family on CUDA, chosen from ``benchmarks/results/precision_nvidia-h200.json`` (README,
"Precision"): fp16 everywhere, the fastest mode within 1.25x of fp16's worst error that never overflowed; bf16, as
fast, moved the SDS gradient 5-8x further from fp32 (31 % for MVDream, ~60 % for the video UNets with near
contexts), TF32 was 1.4-1.8x slower. Families: ``mvdream`` (multi-view guidance), ``sd`` (VSD: both
SD 2.1 UNets and the VAE), ``zeroscope``, ``videocrafter``."""

FALLBACK_DEFAULT = "fp16"
"""``auto`` on CUDA for a network not in :data:`NETWORK_DEFAULTS`."""

WEIGHTS_DTYPE_DOC = (
    "Precision of the frozen networks on CUDA: auto (the measured per-network default, see "
    "fourdfy/guidance/precision.py), fp32, tf32, fp16 or bf16. CPU runs are always fp32."
)

_TORCH_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclasses.dataclass(frozen=True)
class Precision:
    """The resolved precision of a guidance's frozen networks."""

    name: str
    """``fp32``, ``tf32``, ``fp16`` or ``bf16``."""
    dtype: torch.dtype
    """Dtype of the weights and of the inputs given to them."""

    @property
    def tf32(self) -> bool:
        """Whether fp32 matmuls and convolutions may use TensorFloat-32 inside the networks."""
        return self.name == "tf32"


def check_config(cfg: Any, key_prefix: str = "") -> None:
    """Validate ``weights_dtype`` against ``half_precision_weights`` (call from a Config's ``__post_init__``)."""
    name = getattr(cfg, "weights_dtype", "auto")
    if name not in WEIGHTS_DTYPES:
        raise ConfigError(f"{key_prefix}weights_dtype: {name!r} is not one of {', '.join(WEIGHTS_DTYPES)}")
    if not getattr(cfg, "half_precision_weights", True) and name in ("fp16", "bf16"):
        raise ConfigError(
            f"{key_prefix}weights_dtype: {name} contradicts half_precision_weights: false. Set "
            f"half_precision_weights: true, or weights_dtype: fp32/tf32/auto."
        )


def requested(cfg: Any, network: Optional[str] = None) -> str:
    """The precision asked for by the config on CUDA: ``fp32``, ``tf32``, ``fp16`` or ``bf16`` (``auto`` and
    ``half_precision_weights`` resolved)."""
    name = getattr(cfg, "weights_dtype", "auto") or "auto"
    half = bool(getattr(cfg, "half_precision_weights", True))
    if name == "auto":
        if not half:
            return "fp32"
        return NETWORK_DEFAULTS.get(network or "", FALLBACK_DEFAULT)
    if name not in _TORCH_DTYPES:
        raise ConfigError(f"weights_dtype: {name!r} is not one of {', '.join(WEIGHTS_DTYPES)}")
    return name


def resolve(cfg: Any, device: Union[torch.device, str], network: Optional[str] = None) -> Precision:
    """The precision of a guidance's frozen networks on ``device``.

    Args:
        cfg: the guidance's config; ``weights_dtype`` (default ``auto``) and ``half_precision_weights`` (default
            true) are read when present.
        device: where the networks run; anything but CUDA gives fp32.
        network: the family (a key of :data:`NETWORK_DEFAULTS`) whose default ``auto`` takes.
    """
    if torch.device(device).type != "cuda":
        return Precision("fp32", torch.float32)
    name = requested(cfg, network)
    return Precision(name, _TORCH_DTYPES[name])


def resolve_dtype(cfg: Any, device: Union[torch.device, str], network: Optional[str] = None) -> torch.dtype:
    """The weights dtype of :func:`resolve` (for guidances that only need the dtype; pair it with
    :func:`fp32_math` around the network calls so ``tf32`` and strict ``fp32`` take effect)."""
    return resolve(cfg, device, network).dtype


def _set_fp32_precision(matmul: str, conv: str) -> tuple[str, str]:
    """Set the cuBLAS-matmul and cuDNN-conv fp32 precision ("ieee" or "tf32"); return the previous values."""
    mm, cv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    if hasattr(mm, "fp32_precision") and hasattr(cv, "fp32_precision"):
        before = (mm.fp32_precision, cv.fp32_precision)
        mm.fp32_precision, cv.fp32_precision = matmul, conv
        return before
    before_legacy = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = matmul == "tf32"
    torch.backends.cudnn.allow_tf32 = conv == "tf32"
    return tuple("tf32" if v else "ieee" for v in before_legacy)  # type: ignore[return-value]


def _restore_fp32_precision(before: tuple[str, str]) -> None:
    mm, cv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    if hasattr(mm, "fp32_precision") and hasattr(cv, "fp32_precision"):
        mm.fp32_precision, cv.fp32_precision = before
    else:
        torch.backends.cuda.matmul.allow_tf32 = before[0] == "tf32"
        torch.backends.cudnn.allow_tf32 = before[1] == "tf32"


@contextlib.contextmanager
def fp32_math(precision: Precision, device: Union[torch.device, str]) -> Iterator[None]:
    """Run the enclosed network calls with the fp32 matmul/conv mode of ``precision`` on CUDA: TensorFloat-32 for
    ``tf32``, strict IEEE for ``fp32`` (PyTorch's own default lets convolutions use TF32), unchanged for half
    dtypes. The previous global settings are restored on exit. A no-op off CUDA."""
    if torch.device(device).type != "cuda" or precision.name not in ("fp32", "tf32"):
        yield
        return
    mode = "tf32" if precision.tf32 else "ieee"
    before = _set_fp32_precision(mode, mode)
    try:
        yield
    finally:
        _restore_fp32_precision(before)


class _ScopedCall(torch.autograd.Function):
    """``fn(x)`` whose forward *and* backward run under :func:`fp32_math` (the backward of an SDS loss runs long
    after the guidance call returned, outside any context the guidance could hold open)."""

    @staticmethod
    def forward(ctx, fn, precision, device, x):  # type: ignore[override]
        with torch.enable_grad(), fp32_math(precision, device):
            inner_x = x.detach().requires_grad_(True)
            inner_y = fn(inner_x)
        ctx.inner = (inner_x, inner_y)
        ctx.precision, ctx.device = precision, device
        return inner_y.detach()

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        inner_x, inner_y = ctx.inner
        del ctx.inner
        with fp32_math(ctx.precision, ctx.device):
            (grad_x,) = torch.autograd.grad(inner_y, inner_x, grad_y)
        return None, None, None, grad_x


def call_with_math(fn: Any, x: torch.Tensor, precision: Precision, device: Union[torch.device, str]) -> torch.Tensor:
    """``fn(x)`` with the fp32 matmul/conv mode of ``precision`` in its forward and, when ``x`` needs a gradient,
    in its backward too (the VAE encoder of an SDS guidance). ``fn`` must return one tensor; its parameters are
    not differentiated. Plain ``fn(x)`` when the mode changes nothing (half dtypes, off CUDA)."""
    if torch.device(device).type != "cuda" or precision.name not in ("fp32", "tf32"):
        return fn(x)
    if not (x.requires_grad and torch.is_grad_enabled()):
        with fp32_math(precision, device):
            return fn(x)
    return _ScopedCall.apply(fn, precision, device, x)
