"""Evaluate a trial: render the CLIP orbit and the motion probe, compute the figures, write ``save/eval.json``.

Cameras come from the trial's ``data.single_view`` evaluation keys (elevation ``eval_elevation_deg``, distance
``eval_camera_distance``, ``eval_fovy_deg``, ``eval_height x eval_width``); the orbit has ``n_test_views`` views
unless ``num_frames`` is given. See :mod:`fourdfy.evaluation.rendering` and :mod:`fourdfy.evaluation.metrics`.
"""

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Optional

import torch

from fourdfy.evaluation import metrics
from fourdfy.evaluation.clip_model import ClipEncoder
from fourdfy.evaluation.rendering import cameras, orbit_azimuths, orbit_times, render_frames
from fourdfy.evaluation.trial import TrialParts, load_trial
from fourdfy.utils.io import atomic_write_text

EVAL_FILE = "eval.json"


@dataclasses.dataclass
class EvalSettings:
    """What to render for the evaluation (``None``: the trial's own evaluation settings)."""

    num_frames: Optional[int] = None
    """Orbit views (default: the trial's ``n_test_views``)."""
    height: Optional[int] = None
    width: Optional[int] = None
    motion_views: int = 4
    """Fixed cameras of the motion probe (azimuths ``-180 + 360 k / V``); dynamic scenes only."""
    motion_times: int = 16
    """Times per fixed camera, ``linspace(0, 1, T)``."""
    batch_size: int = 32
    """Frames per CLIP forward pass."""


def _finite(x: float) -> Optional[float]:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 6)


def evaluate_parts(
    parts: TrialParts, clip: ClipEncoder, settings: EvalSettings = EvalSettings(), progress: bool = True
) -> tuple[dict[str, Any], Optional[torch.Tensor]]:
    """Compute the evaluation of loaded trial parts.

    Returns:
        (the JSON-ready result, the motion-probe frames ``[V, T, H, W, 3]`` or ``None`` for a static scene).
    """
    from tqdm.auto import tqdm

    cam = parts.eval_camera()
    n = settings.num_frames or int(cam["n_test_views"])
    h = settings.height or int(cam["eval_height"])
    w = settings.width or int(cam["eval_width"])
    elev, dist, fovy = float(cam["eval_elevation_deg"]), float(cam["eval_camera_distance"]), float(cam["eval_fovy_deg"])
    static = parts.is_static
    start = time.time()
    bar = tqdm(total=n + (0 if static else settings.motion_views * settings.motion_times) + 1, desc="evaluate",
               unit="frame", disable=not progress)  # fmt: skip

    orbit = cameras(orbit_azimuths(n), elev, dist, fovy, h, w)
    times = orbit_times(n, static)
    frames = []
    for i in range(n):
        frames.append(render_frames(parts.renderer, orbit.select(i), times[i : i + 1])[0])
        bar.update(1)
    frames = torch.stack(frames)
    image = clip.image_embeds(frames, settings.batch_size)
    text = clip.text_embeds([parts.prompt])[0]
    per_frame = metrics.clip_scores(image, text)
    bar.update(1)

    result: dict[str, Any] = {
        "trial": str(parts.trial_dir),
        "prompt": parts.prompt,
        "step": parts.global_step,
        "static": static,
        "clip_model": clip.name,
        "protocol": (
            "CLIP score = mean over orbit frames of 100*cos(CLIP image emb, CLIP text emb); orbit: azimuth "
            "-180+360k/N at fixed elevation, time k/(N-1) when dynamic; motion: fixed cameras at T times"
        ),
        "orbit": {"num_frames": n, "height": h, "width": w, "elevation_deg": elev, "camera_distance": dist, "fovy_deg": fovy},
        "metrics": {
            "clip_score": _finite(float(per_frame.mean())),
            "clip_score_std": _finite(float(per_frame.std())) if n > 1 else 0.0,
            "clip_consistency_orbit": _finite(metrics.consecutive_cosine(image)),
        },
        "per_frame_clip_score": [round(float(s), 4) for s in per_frame],
    }
    probe = None
    if static:
        result["metrics"].update(motion_amount=0.0, motion_range=0.0, flicker=0.0, clip_consistency_time=1.0)
        result["motion_probe"] = "static field: time is ignored, so every motion figure is 0 (not rendered)"
    else:
        views = cameras(orbit_azimuths(settings.motion_views), elev, dist, fovy, h, w)
        t = torch.linspace(0.0, 1.0, settings.motion_times)
        probe_frames = []
        for v in range(settings.motion_views):
            one = views.select(v)
            row = []
            for k in range(settings.motion_times):
                row.append(render_frames(parts.renderer, one, t[k : k + 1])[0])
                bar.update(1)
            probe_frames.append(torch.stack(row))
        probe = torch.stack(probe_frames)
        time_consistency = [metrics.consecutive_cosine(clip.image_embeds(row, settings.batch_size)) for row in probe]
        result["metrics"].update(
            motion_amount=_finite(metrics.motion_amount(probe)),
            motion_range=_finite(metrics.motion_range(probe)),
            flicker=_finite(metrics.flicker(probe)),
            clip_consistency_time=_finite(sum(time_consistency) / len(time_consistency)),
        )
        result["motion_probe"] = {"views": settings.motion_views, "times": settings.motion_times}
    bar.close()
    result["seconds"] = round(time.time() - start, 2)
    return result, probe


def evaluate_trial(
    trial_dir: str | Path,
    clip: Optional[ClipEncoder | str] = None,
    settings: EvalSettings = EvalSettings(),
    overrides: tuple[str, ...] = (),
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Load a trial, evaluate it and write ``save/eval.json`` (plus ``save/it{S}-eval-motion.mp4`` for a dynamic
    scene: the first fixed camera over time). ``clip`` is a loaded encoder or a hub id / local folder."""
    from fourdfy.evaluation.saving import save_frames_video

    parts = load_trial(trial_dir, tuple(overrides), device=device)
    encoder = clip if isinstance(clip, ClipEncoder) else ClipEncoder.from_pretrained(clip, device=device)
    result, probe = evaluate_parts(parts, encoder, settings, progress)
    save = Path(trial_dir) / "save"
    if probe is not None:
        video = save_frames_video(save / f"it{parts.global_step}-eval-motion.mp4", probe[0], fps=8)
        result["motion_video"] = video.name
    atomic_write_text(save / EVAL_FILE, json.dumps(result, indent=2) + "\n")
    return result
