"""CPU smoke run of benchmarks/zeroscope_unet.py (the tiny-random-zeroscope UNet3D): eager and graph modes timed at
the guidance's call shape, compile skipped off CUDA with a reason, and the JSON report has every field. No timing
is compared, only that the numbers exist."""

import json

from benchmark_scripts import load_benchmark


def test_cpu_smoke_run_writes_the_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from fourdfy.stand_ins.text import TINY_TEXT_DIM

    bench = load_benchmark("zeroscope_unet")
    out = tmp_path / "zeroscope_unet_tiny.json"
    report = bench.main(["--device", "cpu", "--tiny", "--iters", "2", "--warmup", "1", "--compile",
                         "--out", str(out)])  # fmt: skip
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    printed = capsys.readouterr().out
    assert "ZeroScope UNet3D [tiny, fp32]" in printed and str(out) in printed

    assert report["benchmark"] == "zeroscope_unet" and report["device"] == "cpu" and report["card"].startswith("cpu")
    assert report["versions"]["torch"] == __import__("torch").__version__ and report["versions"]["diffusers"]
    assert report["model"] == "tiny-random-zeroscope" and report["dtype"] == "fp32"  # the guidance's CPU dtype
    assert report["params"] > 0 and report["weight_bytes"] == 4 * report["params"]
    x_shape = [2, 4, 4, 16, 24]  # (cond, uncond) x 4 frames of 16x24 latents
    assert report["shapes"] == {"x": x_shape, "t": [2], "encoder_hidden_states": [2, 77, TINY_TEXT_DIM]}

    assert set(report["modes"]) == {"eager", "graph"}
    for mode, r in report["modes"].items():
        t = r["timing"]
        assert t["iters"] == 2 and min(t["median_ms"], t["p10_ms"], t["p90_ms"]) > 0, mode
        assert r["output_shape"] == x_shape, mode
        assert r["cuda_graph"] is False and r["peak_allocated_bytes"] is None, mode  # CPU: plain call, no CUDA memory
        assert r["max_abs_diff_vs_eager"] <= 1e-6 and r["rel_l2_vs_eager"] <= 1e-6, mode
        assert r["tflops_per_s"] is None, mode  # the FLOP count is for the full-size shape only
    assert report["flops_per_call"] is None and "compile_seconds" not in report
    assert {"compiled", "compiled_graph", "tflops_per_s"} <= set(report["skipped"])
    assert "CUDA" in report["skipped"]["compiled"] and report["compile_mode"] == "default"
