"""Stage chaining: ``system.weights=<previous stage>/ckpts/last.ckpt``.

The rule, module by module (a *module* is a top-level child of the system: ``geometry``, ``background``,
``renderer``, ``guidance_single_view``...):

1. Keys under a prefix of ``system.weights_ignore_modules`` are not taken.
2. Frozen pretrained weights (the guidances' diffusion networks) are never taken from a checkpoint: they come from
   their own pretrained files. Keys of them found in the checkpoint (4D-fy saved them) are reported and skipped.
3. A module present in both the checkpoint and the system is loaded *strictly*: the key sets must be equal and every
   shape must match, otherwise the load is refused with a message naming the module and what differs.
4. A module of the system absent from the checkpoint keeps its fresh initialisation (e.g. the VSD LoRA in stage 2);
   a module of the checkpoint absent from the system is skipped (e.g. the VSD LoRA when stage 3 low-VRAM does not
   build VSD). Both are reported.
5. No optimizer state and no step counter are taken: the new stage starts at step 0, so every schedule restarts.
6. As in 4D-fy, every part's ``update_step`` is then called once with the checkpoint's position and
   ``on_load_weights=True`` (``BaseSystem``). Parts that recompute from the live step forget it at the first
   batch; the one one-way state is VSD's max-step anneal (``max_step_latch``), which therefore starts stage 2
   annealed (t in [20, 500]), as 4D-fy's stage 2 ran (reference §1.5, §15.3).

Difference from 4D-fy: the load is strict per module (4D-fy's is non-strict).
"""

import dataclasses
import logging
from typing import Optional

import torch
from torch import nn

from fourdfy.errors import StageWeightsError

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class WeightsReport:
    """What :func:`load_stage_weights` did."""

    loaded: list[str]
    """Modules loaded strictly."""
    kept_fresh: list[str]
    """System modules with no weights in the checkpoint (fresh initialisation kept)."""
    skipped: list[str]
    """Checkpoint modules not taken (ignored by config, frozen pretrained weights, or not part of this system)."""
    source_step: int
    """``global_step`` stored in the checkpoint (replayed once into ``update_step``; the new stage starts at 0)."""
    source_epoch: int = 0
    """``epoch`` stored in the checkpoint."""


def _module_of(key: str) -> str:
    return key.split(".", 1)[0]


def read_checkpoint_state(path: str) -> tuple[dict[str, torch.Tensor], int, int]:
    """The ``state_dict``, ``global_step`` and ``epoch`` of a Lightning checkpoint, read without unpickling
    code."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StageWeightsError(
            f"system.weights: no checkpoint at {path!r}. Pass the previous stage's trial folder checkpoint, "
            f"e.g. system.weights=outputs/fourdfy_stage_1/a_panda_dancing@20240101-000000/ckpts/last.ckpt"
        ) from None
    except Exception as e:
        raise StageWeightsError(f"system.weights: cannot read checkpoint {path!r}: {e}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise StageWeightsError(f"system.weights: {path!r} is not a Lightning checkpoint (no 'state_dict')")
    return ckpt["state_dict"], int(ckpt.get("global_step", 0)), int(ckpt.get("epoch", 0))


def load_stage_weights(
    system: nn.Module, path: str, ignore_modules: Optional[list[str]] = None
) -> WeightsReport:
    """Load the trainable modules of a previous stage into ``system`` by the rule in the module docstring."""
    state, step, epoch = read_checkpoint_state(path)
    ignore = list(ignore_modules or [])
    frozen = system.frozen_state_keys() if hasattr(system, "frozen_state_keys") else set()
    own_modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in system.state_dict().items():
        if key in frozen or any(key == p or key.startswith(p + ".") for p in ignore):
            continue
        own_modules.setdefault(_module_of(key), {})[key] = value

    skipped: set[str] = set()
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        module = _module_of(key)
        if any(key == p or key.startswith(p + ".") for p in ignore):
            skipped.add(f"{module} (system.weights_ignore_modules)")
            continue
        if module.startswith("guidance") and key not in own_modules.get(module, {}):
            # a guidance's pretrained networks come from their own files, never from a training checkpoint
            # (4D-fy saved the frozen MVDream under guidance_multi_view.* and guidance.*)
            skipped.add(f"{module} frozen pretrained weights")
            continue
        by_module.setdefault(module, {})[key] = value

    loaded, kept_fresh = [], []
    to_load: dict[str, torch.Tensor] = {}
    for module, keys in by_module.items():
        if module not in own_modules:
            skipped.add(f"{module} (not a part of this system)")
            continue
        mine = own_modules[module]
        missing = sorted(set(mine) - set(keys))
        unexpected = sorted(set(keys) - set(mine))
        if missing or unexpected:
            raise StageWeightsError(
                f"system.weights: module {module!r} of {path} does not fit this system: "
                f"missing {missing[:6]}{' ...' if len(missing) > 6 else ''}, "
                f"unexpected {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}. The stages were configured with "
                f"different {module} types (e.g. a low-VRAM renderer after a full one, or the deformation geometry "
                f"after the additive one). Chain matching configs, or add {module!r} to system.weights_ignore_modules "
                f"to start it fresh."
            )
        for k, v in keys.items():
            if tuple(v.shape) != tuple(mine[k].shape):
                raise StageWeightsError(
                    f"system.weights: {k} has shape {tuple(v.shape)} in {path} but {tuple(mine[k].shape)} here. "
                    f"Module {module!r} was configured differently in the previous stage (for the hash grids: "
                    f"n_levels, log2_hashmap_size, n_features_per_level must be equal in every stage)."
                )
        to_load.update(keys)
        loaded.append(module)
    for module in own_modules:
        if module not in by_module:
            kept_fresh.append(module)

    result = system.load_state_dict(to_load, strict=False)
    # strict=False here only because frozen and fresh modules are absent by design; check that nothing else is
    unexpected_after = [k for k in result.unexpected_keys]
    # a loaded guidance (VSD's LoRA from stage 2) keeps its frozen networks, which no checkpoint holds
    missing_after = [k for k in result.missing_keys if _module_of(k) in loaded and k not in frozen]
    if unexpected_after or missing_after:
        raise StageWeightsError(f"system.weights: internal key mismatch {missing_after[:4]} {unexpected_after[:4]}")
    report = WeightsReport(sorted(loaded), sorted(kept_fresh), sorted(skipped), step, epoch)
    logger.info(
        "system.weights=%s (step %d): loaded %s; kept fresh %s; skipped %s",
        path, step, report.loaded, report.kept_fresh, report.skipped,
    )  # fmt: skip
    return report
