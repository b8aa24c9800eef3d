"""``--export`` of a trial: build the configured exporter on the trial's field and write ``save/it{S}-export/``."""

from pathlib import Path

from fourdfy.evaluation.trial import TrialParts, load_trial


def export_parts(parts: TrialParts, progress: bool = True) -> list[Path]:
    """Run ``system.exporter_type`` (default ``mesh-exporter``) with ``system.exporter`` on loaded trial parts;
    files go to ``{trial}/save/it{S}-export/`` (S = the checkpoint's step). Returns the paths written."""
    import fourdfy.exporters.mesh_exporter  # noqa: F401  (registers mesh-exporter)
    from fourdfy.registry import build

    s = parts.config["system"]
    exporter = build(
        "exporter", s.get("exporter_type") or "mesh-exporter", s.get("exporter") or {}, "system.exporter",
        parts.geometry, parts.material, parts.background,
    )  # fmt: skip
    out_dir = parts.trial_dir / "save" / f"it{parts.global_step}-export"
    return exporter(out_dir, progress=progress)


def export_trial(trial_dir: str | Path, overrides: tuple[str, ...] = (), progress: bool = True) -> list[Path]:
    """Load a trial (``configs/parsed.yaml`` + ``ckpts/last.ckpt``, with ``key=value`` overrides such as
    ``system.geometry.isosurface_threshold=10`` or ``system.exporter.num_times=32``) and export it."""
    return export_parts(load_trial(trial_dir, tuple(overrides)), progress=progress)
