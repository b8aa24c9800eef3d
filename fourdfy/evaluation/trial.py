"""Load what evaluation and export need from a trial folder: the field parts, their weights, prompt and step.

Only geometry, material, background and renderer are built (with :func:`fourdfy.registry.build`, from
``configs/parsed.yaml``); no guidance or prompt processor, so no diffusion weights are needed. Each part's slice
of the Lightning checkpoint's ``state_dict`` (keys ``geometry.*``, ``material.*``, ``background.*``,
``renderer.*``) is loaded strictly: a missing or unexpected key is an error naming the part.
"""

import dataclasses
import re
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from fourdfy.errors import StageWeightsError

PART_KINDS = (("geometry", "geometry"), ("material", "material"), ("background", "background"))
"""(config slot / state-dict prefix, registry kind) of the parts built before the renderer."""


@dataclasses.dataclass
class TrialParts:
    """The renderable parts of a trial, in eval mode, with their checkpoint's weights."""

    trial_dir: Path
    config: dict
    """The resolved config tree (``configs/parsed.yaml`` plus overrides)."""
    geometry: nn.Module
    material: nn.Module
    background: nn.Module
    renderer: nn.Module
    global_step: int
    epoch: int
    ckpt_path: Path

    @property
    def prompt(self) -> str:
        """The trial's prompt (``system.prompt_processor.prompt``)."""
        return prompt_of(self.config)

    @property
    def is_static(self) -> bool:
        """Whether the field ignores time (stages 1-2)."""
        return bool(getattr(self.geometry, "is_static", True))

    def eval_camera(self) -> dict:
        """The trial's evaluation camera settings (``data.single_view`` eval keys, 4D-fy's defaults if absent)."""
        from fourdfy.data.random_camera import RandomCameraConfig

        d = RandomCameraConfig()
        sv = (self.config.get("data") or {}).get("single_view") or {}
        keys = ("eval_elevation_deg", "eval_camera_distance", "eval_fovy_deg", "eval_height", "eval_width", "n_test_views")
        return {k: sv.get(k, getattr(d, k)) for k in keys}


def prompt_of(config: dict) -> str:
    """``system.prompt_processor.prompt`` of a resolved config tree (empty when absent)."""
    prompt = ((config.get("system") or {}).get("prompt_processor") or {}).get("prompt", "")
    return "" if prompt in (None, "???") else str(prompt)


def load_trial_config(trial_dir: str | Path, overrides: tuple[str, ...] = ()) -> dict:
    """The resolved ``configs/parsed.yaml`` of a trial with ``key=value`` overrides merged in."""
    from fourdfy.experiment import load_raw_config

    parsed = Path(trial_dir) / "configs" / "parsed.yaml"
    if not parsed.is_file():
        raise FileNotFoundError(f"{trial_dir}: not a trial folder (no configs/parsed.yaml)")
    return load_raw_config([str(parsed)], list(overrides))


def state_dict_slice(state_dict: dict, prefix: str) -> dict:
    """The entries under ``prefix.`` with the prefix removed."""
    head = prefix + "."
    return {k[len(head) :]: v for k, v in state_dict.items() if k.startswith(head)}


def load_part_state(part: nn.Module, state_dict: dict, prefix: str, ckpt: Path) -> None:
    """Load a part's slice strictly; a mismatch raises :class:`StageWeightsError` naming the part and keys."""
    what = f"{ckpt}: the {prefix} weights do not fit system.{prefix} of the trial's config"
    try:
        result = part.load_state_dict(state_dict_slice(state_dict, prefix), strict=False)
    except RuntimeError as e:  # shape mismatches
        detail = "; ".join(line.strip() for line in str(e).splitlines()[1:3])
        raise StageWeightsError(f"{what} ({detail})") from None
    if result.missing_keys or result.unexpected_keys:
        raise StageWeightsError(
            f"{what} (missing: {result.missing_keys[:5]}, unexpected: {result.unexpected_keys[:5]})"
        )


def load_trial(
    trial_dir: str | Path,
    overrides: tuple[str, ...] = (),
    ckpt: Optional[str | Path] = None,
    device: str | torch.device = "cpu",
) -> TrialParts:
    """Build geometry, material, background and renderer of a trial and load ``ckpts/last.ckpt`` (or ``ckpt``).

    Args:
        trial_dir: ``outputs/{name}/{tag}@{time}``.
        overrides: ``key=value`` config overrides (e.g. ``system.geometry.isosurface_threshold=10``).
        ckpt: another checkpoint of the trial.
        device: where the parts live.
    """
    from fourdfy.registry import build

    trial_dir = Path(trial_dir)
    config = load_trial_config(trial_dir, overrides)
    ckpt_path = Path(ckpt) if ckpt is not None else trial_dir / "ckpts" / "last.ckpt"
    if not ckpt_path.is_file():
        raise StageWeightsError(f"{trial_dir}: no checkpoint at {ckpt_path}")
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    sd = state.get("state_dict", state)
    s = config["system"]
    parts: dict[str, Any] = {}
    for slot, kind in PART_KINDS:
        parts[slot] = build(kind, s[f"{slot}_type"], s.get(slot) or {}, f"system.{slot}")
    parts["renderer"] = build(
        "renderer", s["renderer_type"], s.get("renderer") or {}, "system.renderer",
        parts["geometry"], parts["material"], parts["background"],
    )  # fmt: skip
    epoch, step = int(state.get("epoch", 0)), int(state.get("global_step", 0))
    for name, part in parts.items():
        load_part_state(part, sd, name, ckpt_path)
        part.to(device).eval()
        part.update_step(epoch, step, on_load_weights=True)
    return TrialParts(trial_dir=trial_dir, config=config, global_step=step, epoch=epoch, ckpt_path=ckpt_path, **parts)


def latest_step_file(folder: Path, pattern: str) -> Optional[Path]:
    """The path in ``folder`` matching ``pattern`` (a regex with one ``(\\d+)`` group, the step) with the highest
    step, or ``None``."""
    rx = re.compile(pattern)
    found = []
    if folder.is_dir():
        for p in folder.iterdir():
            m = rx.fullmatch(p.name)
            if m:
                found.append((int(m.group(1)), p.name, p))
    return max(found)[2] if found else None
