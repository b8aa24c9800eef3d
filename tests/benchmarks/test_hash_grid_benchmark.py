"""benchmarks/hash_grid.py in its CPU smoke mode: it runs in a subprocess and its JSON report has every field."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_smoke_run_writes_the_report(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "hash_grid.py"), "--device", "cpu", "--points", "20000",
           "--repeats", "2", "--warmup", "1", "--out", str(tmp_path)]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    files = list(tmp_path.glob("hash_grid_*.json"))
    assert len(files) == 1 and files[0].name.startswith("hash_grid_cpu")
    report = json.loads(files[0].read_text())
    assert "density MLP" in done.stdout and str(files[0]) in done.stdout  # the table was printed

    assert report["card"].startswith("cpu") and report["device"] == "cpu"
    assert report["versions"]["torch"] == __import__("torch").__version__
    assert {"cuda", "triton"} <= set(report["versions"])
    assert report["args"]["points"] == 20000 and report["args"]["repeats"] == 2
    # 4D-fy's grid, read from configs/fourdfy_stage_3.yaml (through stages 2 and 1)
    assert report["grid_config"] == {"n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 19,
                                     "base_resolution": 16, "per_level_scale": 1.447269237440378}  # fmt: skip
    assert report["mlp_config"]["n_neurons"] == 64 and report["mlp_config"]["n_hidden_layers"] == 1

    rows = report["rows"]
    assert {(r["part"], r["mode"]) for r in rows if r["part"].startswith("grid")} == {
        ("grid3 (static)", "torch"), ("grid4 (x, t)", "torch")}  # no CUDA here: torch only
    mlp = {r["precision"]: r for r in rows if r["part"] == "density MLP"}
    assert set(mlp) == {"fp32", "autocast"}  # on CPU the reduced mode is `autocast` (bf16); `auto` stays fp32
    for r in rows:
        assert r["points"] == 20000
        for phase in ("forward", "forward_backward"):
            m = r[phase]
            assert m["repeats"] == 2
            for key in ("median_ms", "p10_ms", "p90_ms", "peak_mem_mib"):
                assert m[key] > 0, (r["part"], r["mode"], phase, key)
    # the reduced mode really ran in bf16 (a small, non-zero error) and returned float32
    assert mlp["fp32"]["rel_err_vs_fp32"] == 0.0
    assert 0.0 < mlp["autocast"]["rel_err_vs_fp32"] < 0.05
    assert mlp["autocast"]["output_dtype"] == "float32"


def test_point_layouts():
    """The video layout repeats each spatial point once per frame (frame-major) at the frame's time; the clustered
    one stays inside its ball; all stay in the unit cube."""
    sys.path.insert(0, str(ROOT))
    import torch

    from benchmarks.hash_grid import sample_points

    g = torch.Generator().manual_seed(0)
    video = sample_points(64, 4, "video", 4, g)
    assert video.shape == (64, 4)
    frames = video.reshape(4, 16, 4)
    assert torch.equal(frames[0, :, :3], frames[3, :, :3]) and not torch.equal(frames[0, :3, :3], frames[0, 1:4, :3])
    assert torch.allclose(frames[:, :, 3], torch.tensor([0.0, 1 / 3, 2 / 3, 1.0])[:, None].expand(4, 16))
    assert torch.equal(sample_points(64, 3, "video", 4, torch.Generator().manual_seed(0)), video[:, :3])
    clustered = sample_points(1000, 3, "clustered", 4, g)
    assert (clustered - 0.5).norm(dim=-1).max() <= 0.1 + 1e-6
    uniform = sample_points(1000, 4, "uniform", 4, g)
    assert uniform.min() >= 0 and uniform.max() <= 1 and uniform[:, 3].unique().numel() == 1000
