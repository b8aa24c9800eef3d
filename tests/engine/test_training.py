"""End-to-end stage 1 on CPU with the tiny config: trial folder, checkpoint, --test, resume, missing weights."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import launch

ROOT = Path(__file__).resolve().parents[2]
TINY1 = str(ROOT / "configs" / "smoke" / "fourdfy_stage_1_tiny.yaml")
PROMPT = "system.prompt_processor.prompt=a panda dancing"


def trial_of(root: Path, name: str = "fourdfy_stage_1_tiny") -> Path:
    trials = sorted((root / name).iterdir())
    assert len(trials) == 1, trials
    return trials[0]


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory):
    """One tiny stage-1 training run (20 steps, validation at 10 and 20, test at the end)."""
    out = tmp_path_factory.mktemp("stage1")
    rc = launch.main(["--config", TINY1, "--train", PROMPT, f"exp_root_dir={out}"])
    assert rc == 0
    return trial_of(out)


def test_trial_folder_layout(stage1_run):
    t = stage1_run
    assert t.name.startswith("a_panda_dancing@")
    for rel in ["ckpts/last.ckpt", "configs/parsed.yaml", "configs/raw.yaml", "log.txt", "csv_logs/version_0/metrics.csv"]:
        assert (t / rel).is_file(), rel
    assert any((t / "tb_logs").rglob("events.out.tfevents.*"))
    assert (t / "configs" / "raw.yaml").read_text() == Path(TINY1).read_text()
    save = t / "save"
    for rel in ["it10-0.png", "it20-0.png"]:
        assert (save / rel).is_file(), rel
    for video in ["it20-test", "it20-test-depth-jet"]:  # mp4, or the GIF fallback where no ffmpeg exists
        assert (save / f"{video}.mp4").is_file() or (save / f"{video}.gif").is_file(), video
    assert sorted(p.name for p in (save / "it20-test").iterdir()) == [f"{i}.png" for i in range(6)]
    assert len(list((save / "it20-test-depth-jet").iterdir())) == 6


def test_checkpoint_has_no_frozen_guidance_weights(stage1_run):
    ckpt = torch.load(stage1_run / "ckpts" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 20
    keys = list(ckpt["state_dict"])
    assert any(k.startswith("geometry.encoding.encoding.encoding.params") for k in keys)
    assert "renderer.estimator.binaries" in keys
    assert not [k for k in keys if k.startswith("guidance")]
    size = (stage1_run / "ckpts" / "last.ckpt").stat().st_size
    assert size < 2_000_000, size  # the tiny guidance alone would add ~4.6 MB


def test_test_mode_reproduces_images(stage1_run, tmp_path):
    t = stage1_run
    before = tmp_path / "before"
    shutil.copytree(t / "save" / "it20-test", before)
    for f in (t / "save" / "it20-test").iterdir():
        f.unlink()
    rc = launch.main(["--config", str(t / "configs" / "parsed.yaml"), "--test", f"resume={t / 'ckpts' / 'last.ckpt'}"])
    assert rc == 0
    import imageio.v3 as iio

    for i in range(6):
        a = iio.imread(before / f"{i}.png").astype(np.int32)
        b = iio.imread(t / "save" / "it20-test" / f"{i}.png").astype(np.int32)
        assert np.abs(a - b).max() <= 1, i
    assert a.std() > 0  # not a blank image


def test_resume_continues_from_saved_step(stage1_run, tmp_path):
    t = stage1_run
    out = tmp_path / "resumed"
    rc = launch.main([
        "--config", str(t / "configs" / "parsed.yaml"), "--train", f"resume={t / 'ckpts' / 'last.ckpt'}",
        f"exp_root_dir={out}", "trainer.max_steps=24", "timestamp='@resumed'", "use_timestamp=true",
    ])  # fmt: skip
    assert rc == 0
    t2 = out / "fourdfy_stage_1_tiny" / "a_panda_dancing@resumed"
    ckpt = torch.load(t2 / "ckpts" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 24
    steps = [line.split(",") for line in (t2 / "csv_logs/version_0/metrics.csv").read_text().splitlines()[1:]]
    header = (t2 / "csv_logs/version_0/metrics.csv").read_text().splitlines()[0].split(",")
    step_col = header.index("step")
    logged = sorted({int(r[step_col]) for r in steps if r[step_col]})
    assert logged[0] >= 20 and logged[-1] <= 24  # training continued at step 20, not from 0
    assert (t2 / "save" / "it24-test.mp4").is_file() or (t2 / "save" / "it24-test.gif").is_file()


def test_missing_weights_message_without_traceback(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), FOURDFY_CACHE_DIR=str(tmp_path / "c"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "--config", str(ROOT / "configs" / "fourdfy_stage_1.yaml"),
         "--train", PROMPT, f"exp_root_dir={tmp_path}"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr
    assert "Traceback" not in err
    assert "system.guidance_multi_view.ckpt_path" in err
    assert "sd-v2.1-base-4view.pt" in err and "MVDream/MVDream" in err


def test_export_from_the_launcher_writes_meshes_and_the_result_page(stage1_run):
    """``--config <trial>/configs/parsed.yaml --export resume=<trial>/ckpts/last.ckpt`` (threestudio's form): the mesh exporter on the trained tiny field (no guidance is
    built), then the result page. The tiny field's densities stay low, so the threshold is lowered to find a
    surface."""
    t = stage1_run
    rc = launch.main(["--config", str(t / "configs" / "parsed.yaml"), "--export", f"resume={t / 'ckpts' / 'last.ckpt'}",
                      "system.geometry.isosurface_threshold=2",
                      "system.geometry.isosurface_resolution=32"])  # fmt: skip
    assert rc == 0
    export = t / "save" / "it20-export"
    for name in ("model.obj", "model.ply", "model.glb"):
        assert (export / name).is_file() and (export / name).stat().st_size > 200, name
    page = (t / "save" / "index.html").read_text()
    assert "it20-test" in page or "data:video" in page or "data:image" in page
    assert "viewer" in page.lower()
