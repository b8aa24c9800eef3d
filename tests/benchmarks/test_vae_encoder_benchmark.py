"""CPU smoke run of benchmarks/vae_encoder.py (the tiny VAE): every variant timed, results equal across layouts."""

import json

from benchmark_scripts import load_benchmark


def test_cpu_smoke_run_times_every_variant_with_equal_results(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bench = load_benchmark("vae_encoder")
    report = bench.main(["--tiny", "--device", "cpu", "--iters", "1", "--warmup", "0", "--chunks", "2", "0",
                         "--out", str(tmp_path)])  # fmt: skip
    rows = report["rows"]
    assert {(r["layout"], r["frames_per_call"]) for r in rows} == {
        (layout, chunk) for layout in ("nchw", "channels_last") for chunk in (2, 0)
    }
    for r in rows:
        assert r["forward_ms"] > 0 and r["forward_backward_ms"] > 0 and r["grad_max_abs"] > 0
        # channels_last changes only the summation order of the convolutions
        assert r["latent_max_diff"] < 1e-4 and r["grad_max_diff"] < 1e-3 * r["grad_max_abs"]
    (path,) = tmp_path.glob("vae_encoder_tiny_*.json")
    assert json.loads(path.read_text())["rows"] == rows
