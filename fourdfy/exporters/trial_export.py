"""``--export`` of a trial: build the configured exporter on the trial's field and write ``save/it{S}-export/``."""

from pathlib import Path
from typing import Any

from torch import nn

from fourdfy.evaluation.trial import TrialParts, load_trial


def run_exporter(
    exporter_type: str, exporter_cfg: Any, geometry: nn.Module, material: nn.Module, background: Any,
    out_dir: str | Path, progress: bool = True,
) -> list[Path]:
    """Build the registered exporter ``exporter_type`` (``system.exporter_type``; empty: ``mesh-exporter``) with
    ``exporter_cfg`` (``system.exporter``) on the given parts and write its files into ``out_dir``. This is what
    ``--export`` calls, with ``out_dir = {trial}/save/it{S}-export``."""
    import fourdfy.exporters.mesh_exporter  # noqa: F401  (registers mesh-exporter)
    from fourdfy.registry import build

    exporter = build(
        "exporter", exporter_type or "mesh-exporter", exporter_cfg or {}, "system.exporter", geometry, material, background
    )
    return exporter(Path(out_dir), progress=progress)


def export_parts(parts: TrialParts, progress: bool = True) -> list[Path]:
    """:func:`run_exporter` on loaded trial parts with the trial's ``system.exporter_type`` / ``system.exporter``;
    files go to ``{trial}/save/it{S}-export/`` (S = the checkpoint's step). Returns the paths written."""
    s = parts.config["system"]
    out_dir = parts.trial_dir / "save" / f"it{parts.global_step}-export"
    return run_exporter(
        s.get("exporter_type", ""), s.get("exporter"), parts.geometry, parts.material, parts.background, out_dir, progress
    )


def export_trial(trial_dir: str | Path, overrides: tuple[str, ...] = (), progress: bool = True) -> list[Path]:
    """Load a trial (``configs/parsed.yaml`` + ``ckpts/last.ckpt``, with ``key=value`` overrides such as
    ``system.geometry.isosurface_threshold=10`` or ``system.exporter.num_times=32``) and export it."""
    return export_parts(load_trial(trial_dir, tuple(overrides)), progress=progress)
