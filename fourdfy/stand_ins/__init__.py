"""Random-weight stand-ins for the pretrained networks, behind one lookup.

No weights can be downloaded on the CPU machines (CI, the README's install check) nor on the benchmark machines.
So a config may name a *reserved* model instead of a checkpoint; the loaders of the guidances and prompt
processors ask :func:`lookup` first and fall back to real loading when it returns ``None``. The real classes are
built, only the weights are random, so every code path past loading is the real one.

Two sizes:

* ``tiny-random-*`` (:mod:`fourdfy.stand_ins.tiny`, :mod:`fourdfy.stand_ins.text`, :mod:`fourdfy.stand_ins.video`):
  seeded, a few channels, built identically in every process; smoke configs and tests.
* ``random-init-*`` (:mod:`fourdfy.stand_ins.full_size`, :mod:`fourdfy.stand_ins.video`): the real architectures at
  full size, ``N(0, 1/fan_in)`` weights; speed and memory benchmarks.

Families and what a builder returns:

================ ===================================================== =============================================
family           builder signature                                     used by
================ ===================================================== =============================================
``mvdream``      ``() -> (unet, vae, alphas_cumprod)``                 ``multiview-diffusion-guidance.model_name``
``sd``           ``(with_vae: bool) -> (unet, scheduler, vae | None)`` VSD ``pretrained_model_name_or_path[_lora]``
``text``         ``() -> (tokenize, encoder)``                         prompt processors' ``pretrained_model_name_or_path``
``zeroscope``    ``() -> (unet, vae, scheduler)``                      ``zeroscope-guidance.pretrained_model_name_or_path``
``videocrafter`` ``() -> (unet, vae, alphas_cumprod)``                 ``videocrafter-guidance.pretrained_model_name_or_path``
================ ===================================================== =============================================

``tokenize`` maps a list of strings to token ids ``[N, 77]``. The video names are reserved in the ``text`` family too
(the tiny / full-size text stand-ins), so one name can go to both ``system.guidance_video`` and
``system.prompt_processor_video``, as 4D-fy's configs give both the one model name.

Builders are named as ``"module:function"`` and imported only when asked for, so looking a name up is cheap.
"""

import importlib
from collections.abc import Callable
from typing import Any, Optional

_TABLE: dict[str, dict[str, str]] = {
    "mvdream": {
        "tiny-random-4view": "fourdfy.stand_ins.tiny:tiny_mvdream",
        "random-init-sd-v2.1-base-4view": "fourdfy.stand_ins.full_size:random_mvdream",
    },
    "sd": {
        "tiny-random-sd-eps": "fourdfy.stand_ins.tiny:tiny_sd_eps",
        "tiny-random-sd-v": "fourdfy.stand_ins.tiny:tiny_sd_v",
        "random-init-sd-2-1-base": "fourdfy.stand_ins.full_size:random_sd_base",
        "random-init-sd-2-1": "fourdfy.stand_ins.full_size:random_sd_v",
    },
    "text": {
        "tiny-random-clip": "fourdfy.stand_ins.text:tiny_clip",
        "random-init-sd-2-1-text": "fourdfy.stand_ins.full_size:random_sd_text",
        "tiny-random-zeroscope": "fourdfy.stand_ins.text:tiny_clip",
        "random-init-zeroscope-v2-576w": "fourdfy.stand_ins.full_size:random_sd_text",
        "tiny-random-videocrafter": "fourdfy.stand_ins.videocrafter:tiny_videocrafter_text",
        "random-init-videocrafter2": "fourdfy.stand_ins.videocrafter:random_videocrafter2_text",
    },
    "zeroscope": {
        "tiny-random-zeroscope": "fourdfy.stand_ins.video:tiny_zeroscope",
        "random-init-zeroscope-v2-576w": "fourdfy.stand_ins.video:random_zeroscope",
    },
    "videocrafter": {
        "tiny-random-videocrafter": "fourdfy.stand_ins.videocrafter:tiny_videocrafter",
        "random-init-videocrafter2": "fourdfy.stand_ins.videocrafter:random_videocrafter2",
    },
}


def names(family: str) -> tuple[str, ...]:
    """The reserved names of one family (see the module docstring)."""
    return tuple(_TABLE.get(family, {}))


def lookup(family: str, name: str) -> Optional[Callable[..., Any]]:
    """The builder of the stand-in ``name`` of ``family``, or ``None`` when ``name`` is not reserved (then the
    caller loads real weights)."""
    target = _TABLE.get(family, {}).get(name)
    if target is None:
        return None
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def is_stand_in(name: Optional[str]) -> bool:
    """Whether ``name`` is reserved by any family (such models have no checkpoint file)."""
    return name is not None and any(name in table for table in _TABLE.values())
