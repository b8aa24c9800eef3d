"""``benchmarks/iteration.py`` stays alive: its CPU smoke mode runs the tiny stage 3 (every branch, random and fitted
field), its JSON carries the breakdown and the estimate, every fast-path switch parses on every stage config, and
the whole-prompt arithmetic is checked on made-up numbers. No timing is asserted: only that the numbers exist."""

import json
import math
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch

from benchmark_scripts import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
STAGE_CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("fourdfy_stage_*.yaml"))


def test_twelve_stage_configs_are_covered():
    assert len(STAGE_CONFIGS) == 12


@pytest.mark.parametrize("name", STAGE_CONFIGS)
def test_every_fast_path_switch_parses_on_every_stage_config(name):
    """``--fast-paths off`` must never fail on an unknown key: each applicable switch parses strictly, and at least
    the hash-grid and MLP switches apply everywhere."""
    from fourdfy.experiment import load_config, load_yaml_tree

    bench = load_benchmark("iteration")
    config = ROOT / "configs" / name
    tree = load_yaml_tree(config)
    off = bench.fast_path_off_overrides(tree)
    assert any(o.startswith("system.geometry.pos_encoding_config.implementation=") for o in off)
    assert any(o.startswith("system.geometry.mlp_network_config.precision=") for o in off)
    video = bench.VIDEO_OVERRIDES.get((tree.get("system") or {}).get("guidance_type_video"), [])
    cfg, raw = load_config([str(config)], bench.RANDOM_OVERRIDES + video + off + ["system.prompt_processor.prompt=x"])
    for override in off:
        key, value = override.split("=", 1)
        node = raw
        for part in key.split("."):
            node = node[part]
        assert str(node).lower() == value.lower(), (name, key, node)


def test_paper_stage_3_switches_every_memory_path():
    bench = load_benchmark("iteration")
    from fourdfy.experiment import load_yaml_tree

    off = bench.fast_path_off_overrides(load_yaml_tree(ROOT / "configs" / "fourdfy_stage_3.yaml"))
    keys = {o.split("=")[0] for o in off}
    assert {"system.renderer.checkpoint_samples", "system.guidance_video.vae_checkpoint",
            "system.guidance_video.cuda_graph", "system.guidance.cuda_graph",
            "system.guidance_multi_view.cuda_graph"} <= keys  # fmt: skip


def test_synthetic_object_hits_and_misses():
    bench = load_benchmark("iteration")
    rays_o = torch.tensor([[3.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    rays_d = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]])
    times = torch.zeros(3, 1)
    rgb, mask = bench.synthetic_object(rays_o, rays_d, times)
    assert mask[:, 0].tolist() == [1.0, 0.0, 1.0]
    # ray 0 hits the body at (0.45, 0, 0): normal +x -> colour (1, 0.5, 0.5); ray 1 misses: black
    assert torch.allclose(rgb[0], torch.tensor([1.0, 0.5, 0.5]))
    assert torch.equal(rgb[1], torch.zeros(3))
    # ray 2 comes down the z axis: the head (centre (0.25, 0, 0.5) at t = 0, radius 0.22) is 0.25 away from it, so
    # the ray passes beside the head and hits the top of the body, normal +z
    assert torch.allclose(rgb[2], torch.tensor([0.5, 0.5, 1.0]))


def test_phase_fraction_and_whole_prompt_estimate(tmp_path):
    bench = load_benchmark("iteration")

    class Cfg:
        data = {"multi_view": {"width": [64, 256], "resolution_milestones": [5000]}}

    class Flat:
        data = {"multi_view": {"width": [256, 256], "resolution_milestones": [5000]}}

    assert bench.phase_fraction(Cfg, "early", 10000) == 0.5
    assert bench.phase_fraction(Cfg, "late", 25000) == 0.8
    assert bench.phase_fraction(Flat, "early", 100000) == 1.0

    def write(name, config, phase, fraction, max_steps, s_it):
        data = {"config": config, "phase": phase, "phase_fraction": fraction, "max_steps": max_steps, "card": "X",
                "fast_paths": "on", "fields": {"random": {"field": "random", "seconds_per_iter_weighted": s_it}}}
        (tmp_path / name).write_text(json.dumps(data))
        return str(tmp_path / name)

    files = [write("a.json", "s1", "early", 0.5, 10000, 0.036), write("b.json", "s1", "late", 0.5, 10000, 0.072),
             write("c.json", "s3", "late", 1.0, 100000, 0.144)]  # fmt: skip
    est = bench.estimate(files)
    # 5000 * 0.036 + 5000 * 0.072 + 100000 * 0.144 seconds
    assert math.isclose(est["hours"], (180 + 360 + 14400) / 3600)
    assert [r["iterations"] for r in est["rows"]] == [5000, 5000, 100000]
    # one phase of a two-phase stage measured alone: its rate for every iteration, flagged
    only_late = bench.estimate([files[1]])
    assert math.isclose(only_late["hours"], 10000 * 0.072 / 3600) and only_late["rows"][0]["one_phase_only"]


def test_estimate_from_means_weights_each_branch_mean_by_its_probability(tmp_path):
    bench = load_benchmark("iteration")
    kinds = {"multi_view": {"probability": 0.75, "mean": 0.2, "median": 0.1},
             "video": {"probability": 0.25, "mean": 0.6, "median": 0.4}}  # fmt: skip
    old = {"field": "random", "seconds_per_iter_weighted": 0.175, "seconds_per_iter_by_kind": kinds}
    new = {**old, "seconds_per_iter_weighted_mean": 0.3}
    assert bench.branch_weighted(old) == 0.175
    assert math.isclose(bench.branch_weighted(old, "mean"), 0.75 * 0.2 + 0.25 * 0.6)  # a JSON without the key
    assert bench.branch_weighted(new, "mean") == 0.3
    path = tmp_path / "s3.json"
    path.write_text(json.dumps({"config": "s3", "phase": "late", "phase_fraction": 1.0, "max_steps": 3600,
                                "card": "X", "fast_paths": "on", "fields": {"random": old}}))  # fmt: skip
    assert math.isclose(bench.estimate([str(path)], statistic="mean")["hours"], 0.3)
    assert math.isclose(bench.estimate([str(path)])["hours"], 0.175)


def test_cpu_smoke_run_writes_breakdown_and_estimate(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "iteration.py"), "--stage", "3", "--tiny", "--device", "cpu",
           "--steps", "3", "--min-per-branch", "1", "--warmup", "1", "--breakdown-steps", "1", "--field", "both",
           "--fit-steps", "3", "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = tmp_path.glob("iteration_stage_3_tiny_late_fast_tiny_*.json")
    data = json.loads(path.read_text())
    assert data["max_steps"] == 20 and data["phase_fraction"] == 1.0 and data["torch"] == torch.__version__
    assert set(data["fields"]) == {"random", "fitted"}
    assert math.isfinite(data["fit"]["loss_first"]) and data["fit"]["steps"] == 3
    for field in data["fields"].values():
        kinds = field["seconds_per_iter_by_kind"]
        assert set(kinds) == {"multi_view", "single_view", "video"}  # every drawn branch was timed
        assert field["warmup_branches"] == sorted(kinds)  # ...after a warm-up step of its own (--warmup 1)
        assert sum(v["probability"] for v in kinds.values()) == pytest.approx(1.0)
        assert field["seconds_per_iter_weighted"] > 0 and field["samples_per_ray_median"] > 0
        assert set(field["breakdown_by_kind"]) == set(kinds)
        for kind, phases in field["breakdown_by_kind"].items():
            assert set(phases) == set(data["fields"]["random"]["breakdown_by_kind"][kind])
            assert phases["render"] > 0 and phases["guidance"] > 0 and phases["backward"] > 0
        assert field["breakdown_by_kind"]["video"]["vae_encode"] > 0
        assert field["host_syncs_by_kind"] == {}  # counted on CUDA only (torch's sync debug mode)
    assert data["stage_hours_estimate"] > 0
    for field in data["fields"].values():
        kinds = field["seconds_per_iter_by_kind"]
        expected = sum(v["probability"] * v["mean"] for v in kinds.values())
        assert field["seconds_per_iter_weighted_mean"] == pytest.approx(expected)
    est = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "iteration.py"), "--estimate", str(path)],
                         capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert est.returncode == 0 and "whole prompt" in est.stdout
    table = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed_table.py"), str(path)],
                           capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert table.returncode == 0, table.stderr[-2000:]
    row = next(line for line in table.stdout.splitlines() if line.startswith("| `fourdfy_stage_3_tiny`"))
    assert f"{data['fields']['random']['seconds_per_iter_weighted']:.3f}" in row
    # a run under a memory cap is listed apart and never stands in the main table
    capped = tmp_path / "capped.json"
    capped.write_text(json.dumps({**data, "memory_cap_gib": 22.0}))
    table = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed_table.py"), str(capped)],
                           capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert table.returncode == 0, table.stderr[-2000:]
    assert "| `fourdfy_stage_3_tiny`" not in table.stdout
    assert "`fourdfy_stage_3_tiny` (fast paths on) under a 22 GiB cap" in table.stdout
    # so is a tagged run (a setting tried), with the overrides it was given
    assert data["tag"] == "" and data["extra_overrides"] == [] and data["loggers"] is True
    variant = tmp_path / "variant.json"
    variant.write_text(json.dumps({**data, "tag": "memfrac", "extra_overrides": ["system.renderer.x=1"]}))
    table = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed_table.py"), str(path), str(variant)],
                           capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert table.returncode == 0, table.stderr[-2000:]
    assert "`fourdfy_stage_3_tiny` (fast paths on) `memfrac` (`system.renderer.x=1`)" in table.stdout
    assert table.stdout.count("| `fourdfy_stage_3_tiny`") == 1  # the main row is the untagged run


def test_sync_site_skips_torch_frames_and_shortens_paths():
    iteration = load_benchmark("iteration")
    frame = traceback.FrameSummary
    stack = [
        frame(str(iteration.ROOT / "fourdfy" / "renderers" / "occupancy_grid.py"), 243, "_march_torch"),
        frame("/venv/lib/python3.12/site-packages/torch/_tensor.py", 10, "__int__"),
        frame("/usr/lib/python3.12/warnings.py", 5, "_showwarnmsg"),
    ]
    assert iteration.sync_site(stack) == "fourdfy/renderers/occupancy_grid.py:243 _march_torch"
    lightning = [frame("/venv/lib/python3.12/site-packages/pytorch_lightning/core/module.py", 662, "__to_tensor")]
    assert iteration.sync_site(lightning + stack[1:]) == "pytorch_lightning/core/module.py:662 __to_tensor"
    assert iteration.sync_site(stack[1:]) == "?"
    # an environment in a folder named "torch" (the GPU machine's) is not torch's own code
    env = [frame("/opt/torch/lib/python3.12/site-packages/pytorch_lightning/loops/fit_loop.py", 9, "advance")]
    assert iteration.sync_site(env + stack[1:]) == "pytorch_lightning/loops/fit_loop.py:9 advance"


def test_speed_table_marks_on_and_off_runs_of_different_commits():
    """The speed-up column is a same-call ratio only when the fast-paths-on and -off runs measured the same code;
    runs of different commits get a mark and a footnote saying so."""
    table = load_benchmark("speed_table").table

    def run(mode: str, seconds: float, commit: str) -> dict:
        field = {"seconds_per_iter_weighted": seconds, "seconds_per_iter_by_kind": {"multi_view": {"median": seconds}},
                 "peak_memory_gib": 1.0, "samples_per_ray_median": 10.0}  # fmt: skip
        return {"config": "configs/fourdfy_stage_1.yaml", "phase": "late", "fast_paths": mode, "phase_fraction": 0.5,
                "fourdfy_commit": commit, "fields": {"random": field}}  # fmt: skip

    key_on, key_off = ("configs/fourdfy_stage_1.yaml", "late", "on"), ("configs/fourdfy_stage_1.yaml", "late", "off")
    same = table({key_on: run("on", 0.2, "abc"), key_off: run("off", 0.8, "abc")})
    apart = table({key_on: run("on", 0.2, "abc"), key_off: run("off", 0.8, "def")})
    assert "| 4.00× |" in same and "‡" not in same
    assert "| 4.00× ‡ |" in apart and "not a same-call ratio" in apart
