"""Data-parallel training on CPU (2 processes, gloo): own camera draws per rank, identical parameters and
occupancy grid, one set of output files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    torch.cuda.is_available() and torch.cuda.device_count() < 2,
    reason="--gpu 0,1 picks the GPUs where CUDA exists; this machine has one, so the CPU (gloo) run cannot happen here",
)
def test_two_process_ddp_on_cpu(tmp_path):
    report = tmp_path / "report"
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
    )  # the installed packages stay importable (a --target install on the GPU machine)
    env.pop("LOCAL_RANK", None)
    cmd = [
        sys.executable, str(ROOT / "tests" / "helpers" / "ddp_probe.py"), str(report),
        "--config", str(ROOT / "configs" / "smoke" / "fourdfy_stage_1_tiny.yaml"), "--train", "--gpu", "0,1",
        "system.prompt_processor.prompt=a panda dancing", f"exp_root_dir={tmp_path / 'out'}", "trainer.max_steps=17",
        "trainer.val_check_interval=17", "data.single_view.n_test_views=2",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0 = json.loads((report / "rank0.json").read_text())
    r1 = json.loads((report / "rank1.json").read_text())
    assert r0["world_size"] == 2 and r1["world_size"] == 2 and r0["global_step"] == r1["global_step"] == 17
    # every rank draws its own cameras (4D-fy used the same seed on all ranks)
    assert r0["azimuths"] != r1["azimuths"]
    # gradients are averaged: the parameters stay identical
    assert r0["params"].keys() == r1["params"].keys() and len(r0["params"]) > 0
    for name in r0["params"]:
        assert r0["params"][name] == r1["params"][name], name
    # the occupancy grid (updated at steps 0 and 16) is the same on both ranks
    assert r0["occs"] == r1["occs"] and r0["binaries"] == r1["binaries"]
    # one trial folder and one set of outputs
    trials = list((tmp_path / "out" / "fourdfy_stage_1_tiny").iterdir())
    assert len(trials) == 1, trials
    t = trials[0]
    assert (t / "ckpts" / "last.ckpt").is_file()
    assert sorted(p.name for p in (t / "save" / "it17-test").iterdir()) == ["0.png", "1.png"]
    assert [p.name for p in (t / "csv_logs").iterdir()] == ["version_0"]
    assert [p.name for p in (t / "tb_logs").iterdir()] == ["version_0"]
