"""python -m fourdfy.evaluate on trial folders: the orbit is rendered from the checkpoint, eval.json is written."""

import json

import pytest
import torch

from fourdfy.evaluate import main as evaluate_main
from fourdfy.evaluation import metrics
from fourdfy.evaluation.evaluate_trial import EvalSettings, evaluate_trial
from fourdfy.evaluation.rendering import cameras, orbit_azimuths, render_frames
from fourdfy.evaluation.trial import load_trial
from synthetic_trials import save_tiny_clip, tiny_clip_encoder

SMALL = EvalSettings(num_frames=4, height=16, width=16, motion_views=2, motion_times=3)


def test_static_trial(static_tiny_trial):
    enc = tiny_clip_encoder()
    result = evaluate_trial(static_tiny_trial, enc, SMALL, progress=False)
    saved = json.loads((static_tiny_trial / "save" / "eval.json").read_text())
    assert saved["metrics"] == result["metrics"]
    assert saved["prompt"] == "a panda" and saved["step"] == 20 and saved["static"] is True
    assert saved["orbit"] == {
        "num_frames": 4, "height": 16, "width": 16, "elevation_deg": 15.0, "camera_distance": 3.0, "fovy_deg": 40.0,
    }  # fmt: skip  (4D-fy's test camera: distance 3, fovy 40, elevation 15)
    m = saved["metrics"]
    assert m["motion_amount"] == 0.0 and m["motion_range"] == 0.0
    assert len(saved["per_frame_clip_score"]) == 4
    # recompute the score from an independent render of the same orbit
    parts = load_trial(static_tiny_trial)
    orbit = cameras(orbit_azimuths(4), 15.0, 3.0, 40.0, 16, 16)
    frames = render_frames(parts.renderer, orbit, torch.zeros(4))
    with torch.no_grad():
        opacity = parts.renderer(orbit.select(0)).opacity[0, 0, ..., 0]
    assert opacity[8, 8] > 0.5 and opacity[0, 0] < 0.1  # the blob is in the middle of the frame
    expected = metrics.clip_score(enc.image_embeds(frames), enc.text_embeds(["a panda"])[0])
    assert m["clip_score"] == pytest.approx(expected, abs=1e-4)


def test_dynamic_trial_has_motion(dynamic_tiny_trial):
    result = evaluate_trial(dynamic_tiny_trial, tiny_clip_encoder(), SMALL, progress=False)
    m = result["metrics"]
    assert result["static"] is False
    assert m["motion_amount"] > 1e-4 and m["motion_range"] > 1e-4
    assert 0.0 < m["clip_consistency_time"] <= 1.0
    assert (dynamic_tiny_trial / "save" / result["motion_video"]).is_file()


def test_command_line_with_a_local_clip_folder(static_tiny_trial, tmp_path, capsys):
    clip = save_tiny_clip(tmp_path / "clip")
    rc = evaluate_main([str(static_tiny_trial), "--clip", str(clip), "--num-frames", "2", "--height", "8", "--width", "8"])
    assert rc == 0
    out = capsys.readouterr().out
    assert '"clip_score"' in out and "index.html" in out
    saved = json.loads((static_tiny_trial / "save" / "eval.json").read_text())
    assert saved["orbit"]["num_frames"] == 2 and saved["clip_model"] == str(clip)
    assert evaluate_main([str(static_tiny_trial), "--clip", str(tmp_path / "missing"), "--no-page"]) == 2
    assert "--clip" in capsys.readouterr().err
