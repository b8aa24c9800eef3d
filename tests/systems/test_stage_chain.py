"""Stage chaining through system.weights, and the one-command pipeline."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import launch
from fourdfy.errors import StageWeightsError
from fourdfy.experiment import load_config
from fourdfy.registry import build

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke"
PROMPT = "system.prompt_processor.prompt=a panda dancing"


@pytest.fixture(scope="module")
def stage1_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("chain")
    assert launch.main(["--config", str(SMOKE / "fourdfy_stage_1_tiny.yaml"), "--train", PROMPT, f"exp_root_dir={out}"]) == 0
    (trial,) = (out / "fourdfy_stage_1_tiny").iterdir()
    return trial


def build_system(config: Path, *overrides: str, overlay: Path | None = None):
    cfg, _ = load_config([str(config)] + ([str(overlay)] if overlay else []), [PROMPT, *overrides])
    return build("system", cfg.system_type, cfg.system, "system")


POINTS = torch.tensor([[0.0, 0.0, 0.0], [0.2, -0.1, 0.3], [0.5, 0.5, 0.0], [-0.3, 0.4, -0.2]])


def test_stage2_starts_from_stage1_geometry(stage1_ckpt):
    ckpt = stage1_ckpt / "ckpts" / "last.ckpt"
    stage1 = build_system(stage1_ckpt / "configs" / "parsed.yaml")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    stage1.load_state_dict({**stage1.state_dict(), **state})
    stage2 = build_system(SMOKE / "fourdfy_stage_2_tiny.yaml", f"system.weights={ckpt}")
    fresh = build_system(SMOKE / "fourdfy_stage_2_tiny.yaml")
    times = torch.zeros(1, 1)
    with torch.no_grad():
        d1 = stage1.geometry.forward_density(POINTS, times)
        d2 = stage2.geometry.forward_density(POINTS, times)
        d0 = fresh.geometry.forward_density(POINTS, times)
    torch.testing.assert_close(d2, d1)
    assert not torch.allclose(d0, d1)  # a fresh stage 2 differs, so the equality above means something
    report = stage2.weights_report
    assert report.loaded == ["background", "geometry", "renderer"]
    assert report.kept_fresh == ["guidance_single_view"]  # the VSD LoRA is new in stage 2
    assert report.source_step == 20
    torch.testing.assert_close(stage2.renderer.estimator.binaries, stage1.renderer.estimator.binaries)
    # as in 4D-fy, the loaded step (20, past the tiny anneal_start_step 10) latches VSD's max-step anneal
    assert stage2.guidance_single_view.max_step == 500


def test_shape_mismatch_is_refused_with_reason(stage1_ckpt):
    ckpt = stage1_ckpt / "ckpts" / "last.ckpt"
    with pytest.raises(StageWeightsError) as e:
        build_system(SMOKE / "fourdfy_stage_2_tiny.yaml", f"system.weights={ckpt}",
                     "system.geometry.pos_encoding_config.log2_hashmap_size=10")  # fmt: skip
    msg = str(e.value)
    assert "geometry.encoding.encoding.encoding.params" in msg and "log2_hashmap_size" in msg


def test_renderer_type_mismatch_is_refused_unless_ignored(stage1_ckpt, tmp_path):
    ckpt = stage1_ckpt / "ckpts" / "last.ckpt"
    overlay = tmp_path / "low_vram.yaml"  # a full-memory stage 1 chained into a low-VRAM stage 2
    overlay.write_text(
        "system:\n  background: {random_aug: false}\n  renderer_type: stable-nerf-volume-renderer\n"
        "  renderer:\n    _replace_: true\n    base_renderer_type: mask-nerf-volume-renderer\n"
        "    base_renderer: {num_samples_per_ray: 64}\n"
    )
    with pytest.raises(StageWeightsError) as e:
        build_system(SMOKE / "fourdfy_stage_2_tiny.yaml", f"system.weights={ckpt}", overlay=overlay)
    assert "module 'renderer'" in str(e.value) and "weights_ignore_modules" in str(e.value)
    s2 = build_system(SMOKE / "fourdfy_stage_2_tiny.yaml", f"system.weights={ckpt}",
                      "system.weights_ignore_modules=[renderer]", overlay=overlay)  # fmt: skip
    assert "renderer (system.weights_ignore_modules)" in s2.weights_report.skipped
    assert "geometry" in s2.weights_report.loaded and "renderer" not in s2.weights_report.loaded


def test_missing_stage_checkpoint_message(tmp_path):
    with pytest.raises(StageWeightsError, match="no checkpoint at"):
        build_system(SMOKE / "fourdfy_stage_2_tiny.yaml", f"system.weights={tmp_path / 'nope.ckpt'}")


def test_pipeline_runs_stages_in_order_and_skips_finished(tmp_path):
    """The tiny chain 1 -> 2 -> 3 through ``--pipeline``: each stage starts from the previous one's checkpoint, the
    scene of stage 3 moves (its test views at their times differ from the same views at t = 0), ``--test`` from
    the stage-3 checkpoint reproduces the test images, and a rerun skips every finished stage."""
    cmd = [sys.executable, str(ROOT / "launch.py"), "--pipeline", str(SMOKE / "fourdfy_tiny.yaml"), "--train",
           PROMPT, f"exp_root_dir={tmp_path}"]  # fmt: skip
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (t1,) = (tmp_path / "fourdfy_stage_1_tiny").iterdir()
    (t2,) = (tmp_path / "fourdfy_stage_2_tiny").iterdir()
    parsed2 = (t2 / "configs" / "parsed.yaml").read_text()
    assert f"weights: {t1 / 'ckpts' / 'last.ckpt'}" in parsed2
    ck2 = torch.load(t2 / "ckpts" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck2["global_step"] == 20  # stage 2 counted its own 20 steps from 0
    assert any(k.startswith("guidance_single_view.lora_layers.") for k in ck2["state_dict"])
    (t3,) = (tmp_path / "fourdfy_stage_3_tiny").iterdir()
    assert f"weights: {t2 / 'ckpts' / 'last.ckpt'}" in (t3 / "configs" / "parsed.yaml").read_text()
    ck3 = torch.load(t3 / "ckpts" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck3["global_step"] == 20 and "geometry.encoding.encoding.encoding_time.params" in ck3["state_dict"]
    save = t3 / "save"
    for video in ("it20-test", "it20-test_static", "it20-0_video", "it20-test-depth-jet"):
        assert (save / f"{video}.mp4").is_file() or (save / f"{video}.gif").is_file(), video
    dynamic = read_numbered(save / "it20-test")
    static = read_numbered(save / "it20-test_static")
    assert len(dynamic) == len(static) == 12  # motion_smooth with 8 times: 2 * 8 - 4 views
    # the same view at its time and at t = 0: the temporal grid, trained on the few video steps of 20, moves the
    # scene (by a little, in 20 tiny steps); a static field would give identical images
    assert max(np.abs(d - s).max() for d, s in zip(dynamic[1:], static[1:])) >= 1
    for f in (save / "it20-test").iterdir():
        f.unlink()
    rerun = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--config", str(t3 / "configs" / "parsed.yaml"),
                            "--test", f"resume={t3 / 'ckpts' / 'last.ckpt'}"],
                           capture_output=True, text=True, timeout=900, cwd=tmp_path)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for a, b in zip(dynamic, read_numbered(save / "it20-test")):
        assert np.abs(a - b).max() <= 1
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stderr.count("skipping") == 3, second.stderr[-3000:]
    for stage in (1, 2, 3):
        assert len(list((tmp_path / f"fourdfy_stage_{stage}_tiny").iterdir())) == 1


def read_numbered(folder: Path) -> list[np.ndarray]:
    """``{i}.png`` of a folder in index order, as int arrays."""
    import imageio.v3 as iio

    files = sorted(folder.glob("*.png"), key=lambda p: int(p.stem))
    return [iio.imread(f)[..., :3].astype(np.int32) for f in files]
