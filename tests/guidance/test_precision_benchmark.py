"""benchmarks/precision.py in its CPU smoke mode (--device cpu --tiny): it runs and its JSON has every field."""

import json
import math

from benchmark_scripts import load_benchmark


def test_tiny_cpu_run_writes_the_report(tmp_path):
    bench = load_benchmark("precision")
    out = tmp_path / "precision_cpu.json"
    bench.main(["--device", "cpu", "--tiny", "--out", str(out)])
    report = json.loads(out.read_text())
    for key in ("card", "device", "versions", "args", "gradients", "timing", "vae", "skipped", "errors",
                "recommendation", "near_context", "eps_ratio"):
        assert key in report, key
    assert report["card"].startswith("cpu") and report["tiny"] is True
    assert report["versions"]["torch"] and "diffusers" in report["versions"]
    modes = ["fp32", "tf32", "fp16", "fp16-autocast", "bf16"]
    assert report["args"]["modes"] == modes and report["args"]["t"] == [20, 200, 500, 800, 980]
    assert report["errors"] == [], report["errors"]

    rows = report["gradients"]
    for net in ("mvdream", "sd-2.1-base", "sd-2.1-v", "vsd", "sd-2.1-v-native"):
        for mode in modes:
            mine = [r for r in rows if r["network"] == net and r["mode"] == mode]
            contexts = {"random"} if net == "sd-2.1-v" else {"random", "near"}
            assert {(r["context"], r["t"]) for r in mine} == {(c, t) for c in contexts for t in report["args"]["t"]}
            for r in mine:
                assert r["finite"] is True and set(r) >= {"cos", "rel_err", "shape", "cfg", "family"}
                if mode in ("fp32", "tf32"):  # tf32 is plain fp32 off CUDA
                    assert r["rel_err"] == 0.0 and math.isclose(r["cos"], 1.0, abs_tol=1e-12)
                else:  # half precision really ran: a small, non-zero error
                    assert 0.0 < r["rel_err"] < 1.0 and r["cos"] > 0.5
    # bf16's 7-bit mantissa is further from fp32 than fp16's 10 bits, on CPU too
    worst = {m: max(r["rel_err"] for r in rows if r["network"] == "mvdream" and r["mode"] == m) for m in modes}
    assert worst["bf16"] > worst["fp16"] > 0

    near = [r for r in report["eps_ratio"] if r["network"] == "mvdream" and r["context"] == "near" and r["t"] == 500]
    assert len(near) == 1 and 0.005 < near[0]["eps_diff_over_eps"] < 0.2  # calibrated to ~3 %

    vae = {(r["network"], r["mode"]): r for r in report["vae"]}
    for name in ("mvdream-vae", "sd-vae"):
        for mode in modes:
            r = vae[(name, mode)]
            assert r["finite"] and r["ms_median"] > 0 and "latent_rel_err" in r
            assert (r["rel_err"] == 0.0) == (mode in ("fp32", "tf32"))
    timing = {(r["network"], r["mode"]) for r in report["timing"]}
    assert {(n, m) for n in ("mvdream", "sd-2.1-base", "sd-2.1-v") for m in modes} <= timing
    skipped = {s["network"] for s in report["skipped"]}
    for family in ("zeroscope", "videocrafter"):  # measured once their networks exist, else skipped with a reason
        assert family in skipped or any(r["family"] == family for r in rows)
    assert set(report["recommendation"]) >= {"mvdream", "sd"}
    for rec in report["recommendation"].values():
        assert rec["weights_dtype"] in ("fp32", "tf32", "fp16", "bf16")
