"""Benchmark of ZeroScope v2 576w's UNet3D at 4D-fy's stage-3 shape (random weights, no checkpoint needed).

One 4D-fy ZeroScope guidance call: 16 frames rendered and resized to 576x320 -> latents [1,4,16,40,72], run as a
(cond, uncond) batch of 2: x [2,4,16,40,72], t [2] (int64), encoder_hidden_states [2,77,1024]. The network is
diffusers' ``UNet3DConditionModel`` as the guidance loads it for the reserved stand-in name
``random-init-zeroscope-v2-576w`` (the real config, 1411 M parameters, ``N(0, 1/fan_in)`` weights), in fp16 weights
and inputs (how 4D-fy runs ZeroScope), called like ``fourdfy/guidance/zeroscope_guidance.py`` does:
``unet(x, t, encoder_hidden_states=text).sample`` under ``torch.no_grad`` with autocast off. Modes:

* ``eager``: the plain call;
* ``graph``: replayed through ``fourdfy.guidance.cuda_graph.GraphedForward``, as the guidance uses it (static-input
  copies and the output clone included);
* with ``--compile``: ``compiled``, ``torch.compile(unet, mode=--compile-mode)`` called directly, and
  ``compiled_graph``, that compiled callable wrapped in ``GraphedForward`` (a CUDA graph captured around the
  Inductor-compiled forward). ``compile_seconds`` is the time of the first compiled call.

Per mode: median / p10 / p90 ms (CUDA events after warm-up, ``benchmarks/timing.py``), the peak allocated GPU memory
of the mode's first call after set-up (for the graph modes that is the capturing call, whose pool the graph keeps),
the max abs and relative L2 difference of the output against eager, and the achieved TFLOP/s. The count is
**28.5 TFLOP per call** (28.51, batch 2, 2 FLOPs per multiply-add, attention included;
``../shared/reference/guidance-models.md`` §7), so it is reported at the full-size shape only.

Usage (GPU):   python benchmarks/zeroscope_unet.py --compile [--compile-mode max-autotune-no-cudagraphs]
Smoke (CPU):   python benchmarks/zeroscope_unet.py --device cpu --tiny --iters 2 --warmup 1
               (``tiny-random-zeroscope``'s UNet, fp32 as the guidance on CPU; ``graph`` falls back to the plain call
               off CUDA; ``--compile`` is skipped on CPU and the JSON says so)

Writes ``benchmarks/results/zeroscope_unet_<card-slug>.json`` (``_tiny`` appended for ``--tiny``; override with
``--out``).
"""

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.machine import card_name, versions, write_report  # noqa: E402
from benchmarks.mvdream_unet import relative_error  # noqa: E402
from benchmarks.timing import time_calls  # noqa: E402
from benchmarks.videocrafter_unet import peak_bytes  # noqa: E402
from fourdfy.guidance.cuda_graph import GraphedForward  # noqa: E402
from fourdfy.guidance.zeroscope_guidance import load_zeroscope_components  # noqa: E402

MODEL_NAMES = {"full": "random-init-zeroscope-v2-576w", "tiny": "tiny-random-zeroscope"}
"""Reserved stand-in names (``fourdfy/stand_ins``) of the two sizes."""
FULL_SHAPE = [2, 4, 16, 40, 72]
"""x of one 4D-fy guidance call: (cond, uncond) x 16 frames of 320x576 video latents."""
FLOPS_PER_CALL = 28.51e12
"""Forward FLOPs of one call at :data:`FULL_SHAPE` (guidance-models.md §7)."""
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: cuda)")
    p.add_argument("--tiny", action="store_true", help="tiny-random-zeroscope UNet, latent 16x24, 4 frames (CPU smoke)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="weights and inputs (default: fp16 on CUDA, fp32 on CPU, as the guidance)")
    p.add_argument("--frames", type=int, default=None, help="frames T (default 16; 4 with --tiny)")
    p.add_argument("--latent", default=None, help="latent HxW (default 40x72; 16x24 with --tiny)")
    p.add_argument("--iters", type=int, default=30, help="timed calls per mode (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls before timing (default 5)")
    p.add_argument("--no-cuda-graph", action="store_true", help="skip the graph and compiled_graph modes")
    p.add_argument("--compile", action="store_true", help="also the compiled and compiled_graph modes (slow to build)")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default="default", help="torch.compile mode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    return p.parse_args(argv)


def build_unet(tiny: bool, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The stand-in's UNet3D, loaded as the guidance loads it, frozen, in ``dtype`` on ``device`` (the VAE it comes
    with is dropped)."""
    unet = load_zeroscope_components(MODEL_NAMES["tiny" if tiny else "full"], "zeroscope_unet").unet
    return unet.to(device, dtype).eval().requires_grad_(False)


def make_inputs(args: argparse.Namespace, text_dim: int, dtype: torch.dtype,
                device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """``(x, t, text)`` as the guidance builds them: ``[z_t; z_t]``, ``[t; t]`` (int64), ``[cond; uncond]``."""
    g = torch.Generator(device="cpu").manual_seed(args.seed + 1)
    frames = args.frames or (4 if args.tiny else 16)
    height, width = (int(v) for v in (args.latent or ("16x24" if args.tiny else "40x72")).split("x"))
    z_t = torch.randn(1, 4, frames, height, width, generator=g)
    t = torch.randint(20, 981, (1,), generator=g)
    text = torch.randn(2, 77, text_dim, generator=g)
    return torch.cat([z_t, z_t]).to(device, dtype), torch.cat([t, t]).to(device), text.to(device, dtype)


def unet_call(unet: Callable[..., Any]) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """``fn(x, t, text)``: the guidance's ``_unet_call`` on ``unet`` (a module or its compiled callable)."""

    def call(x: Tensor, t: Tensor, text: Tensor) -> Tensor:
        return unet(x, t, encoder_hidden_states=text).sample

    return call


def bench_mode(fn: Callable[..., Tensor], inputs: tuple[Tensor, ...], eager_out: Tensor, cuda_graph: bool,
               flops: Optional[float], args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Peak memory of ``fn``'s next call, its output against eager, its timings and achieved TFLOP/s."""
    first: list[Tensor] = []
    peak = peak_bytes(device, lambda: first.append(fn(*inputs)))
    out = first.pop()
    timing = time_calls(lambda: fn(*inputs), device, args.iters, args.warmup)
    return {
        "cuda_graph": cuda_graph,
        "timing": timing,
        "peak_allocated_bytes": peak,
        "output_shape": list(out.shape),
        "max_abs_diff_vs_eager": float((out.float() - eager_out.float()).abs().max()),
        "rel_l2_vs_eager": relative_error(out, eager_out),
        "tflops_per_s": flops / (timing["median_ms"] * 1e-3) / 1e12 if flops else None,
    }


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Run the benchmark, print a table and write the JSON report."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available; use --device cpu --tiny for a smoke run.")
    on_cuda = device.type == "cuda"
    dtype_name = args.dtype or ("fp16" if on_cuda else "fp32")
    dtype = DTYPES[dtype_name]
    torch.manual_seed(args.seed)
    unet = build_unet(args.tiny, device, dtype)
    inputs = make_inputs(args, int(unet.config.cross_attention_dim), dtype, device)
    full_shape = not args.tiny and list(inputs[0].shape) == FULL_SHAPE
    flops = FLOPS_PER_CALL if full_shape else None
    report: dict[str, Any] = {
        "benchmark": "zeroscope_unet",
        "card": card_name(device),
        "device": str(device),
        "versions": versions("diffusers"),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "model": MODEL_NAMES["tiny" if args.tiny else "full"],
        "config": "tiny" if args.tiny else "zeroscope_v2_576w",
        "dtype": dtype_name,
        "params": sum(p.numel() for p in unet.parameters()),
        "weight_bytes": sum(p.numel() * p.element_size() for p in unet.parameters()),
        "shapes": {name: list(v.shape) for name, v in zip(("x", "t", "encoder_hidden_states"), inputs)},
        "flops_per_call": flops,
        "compile_mode": args.compile_mode if args.compile else None,
        "modes": {},
        "skipped": {},
    }
    if flops is None:
        report["skipped"]["tflops_per_s"] = "the FLOP count is for the full-size shape only"
    modes, skipped = report["modes"], report["skipped"]
    plain = unet_call(unet)
    with torch.no_grad(), torch.autocast(device.type, enabled=False):  # as the guidance's UNet call
        eager_out = plain(*inputs)
        modes["eager"] = bench_mode(plain, inputs, eager_out, False, flops, args, device)
        print_row("eager", modes["eager"])
        if args.no_cuda_graph:
            skipped["graph"] = "--no-cuda-graph"
        else:
            modes["graph"] = bench_mode(GraphedForward(plain), inputs, eager_out, on_cuda, flops, args, device)
            print_row("graph", modes["graph"])
            release(device)
        if not args.compile:
            skipped["compiled"] = skipped["compiled_graph"] = "no --compile"
        elif not on_cuda:
            skipped["compiled"] = skipped["compiled_graph"] = "torch.compile is measured on CUDA only"
        else:
            compiled = unet_call(torch.compile(unet, mode=args.compile_mode))
            t0 = time.perf_counter()
            compiled(*inputs)
            torch.cuda.synchronize(device)
            report["compile_seconds"] = time.perf_counter() - t0
            modes["compiled"] = bench_mode(compiled, inputs, eager_out, False, flops, args, device)
            print_row("compiled", modes["compiled"])
            if args.no_cuda_graph:
                skipped["compiled_graph"] = "--no-cuda-graph"
            else:
                graphed = GraphedForward(compiled)
                modes["compiled_graph"] = bench_mode(graphed, inputs, eager_out, True, flops, args, device)
                print_row("compiled_graph", modes["compiled_graph"])

    print_table(report)
    write_report(report, "zeroscope_unet", args.out, args.tiny)
    return report


def release(device: torch.device) -> None:
    """Give cached blocks back (a dropped graph's pool) so the next mode's peak starts clean."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def print_row(mode: str, result: dict[str, Any]) -> None:
    """One progress line per finished mode."""
    print(f"[{mode}] {result['timing']['median_ms']:.2f} ms", flush=True)


def print_table(report: dict[str, Any]) -> None:
    """Plain-text summary of a report."""
    v = report["versions"]
    print(f"ZeroScope UNet3D [{report['config']}, {report['dtype']}] on {report['card']} (torch {v['torch']}, "
          f"cuda {v['cuda']}, diffusers {v['diffusers']}), params {report['params'] / 1e6:.2f} M, "
          f"shapes {report['shapes']}")
    print(f"{'mode':<16}{'median ms':>11}{'p10 ms':>10}{'p90 ms':>10}{'peak GiB':>10}{'TFLOP/s':>9}"
          f"{'max abs':>10}{'rel L2':>10}")
    for mode, r in report["modes"].items():
        t, peak, tflops = r["timing"], r["peak_allocated_bytes"], r["tflops_per_s"]
        print(f"{mode:<16}{t['median_ms']:>11.2f}{t['p10_ms']:>10.2f}{t['p90_ms']:>10.2f}"
              f"{f'{peak / 2**30:.2f}' if peak else '-':>10}{f'{tflops:.1f}' if tflops else '-':>9}"
              f"{r['max_abs_diff_vs_eager']:>10.2e}{r['rel_l2_vs_eager']:>10.2e}")
    if "compile_seconds" in report:
        print(f"compile_seconds ({report['compile_mode']}): {report['compile_seconds']:.1f}")
    for mode, reason in report["skipped"].items():
        print(f"skipped {mode}: {reason}")


if __name__ == "__main__":
    main()
