"""Benchmark of VideoCrafter2's 3D UNet at 4D-fy's stage-3 shape (random weights, no checkpoint needed).

One 4D-fy VideoCrafter2 guidance call: 16 frames rendered and resized to 512x320 -> latents [1,4,16,40,64], run as a
(cond, uncond) batch of 2: x [2,4,16,40,64], t [2], context [2,77,1024], fps [8,8]; full-size ``t2v_512_v2``
config (1413 M parameters). Measured under ``torch.no_grad`` for each precision:

* ``fp32``, ``bf16``, ``fp16``: the weights cast to that dtype (inputs too);
* ``amp16``: fp32 weights under fp16 autocast, which is how 4D-fy runs VideoCrafter2 with ``precision: 16-mixed``;

in two modes: eager (CUDA events, warm-up, median / p10 / p90) and CUDA-graph replay through
``fourdfy.guidance.cuda_graph.GraphedForward`` (what the guidance uses: static-input copies and the output clone are
included). Also reported: peak GPU memory per mode, the relative L2 error of each precision against fp32 with TF32
off, and the graph-vs-eager difference.

Usage (GPU):   python benchmarks/videocrafter_unet.py [--precisions bf16,fp16] [--frames 8] [--compile]
Smoke (CPU):   python benchmarks/videocrafter_unet.py --device cpu --tiny --iters 2 --warmup 1

Writes ``benchmarks/results/videocrafter_unet_<card-slug>.json`` (``_tiny`` appended for ``--tiny``; override with
``--out``).
"""

import argparse
import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.machine import card_name, write_report  # noqa: E402
from benchmarks.mvdream_unet import relative_error  # noqa: E402
from benchmarks.timing import time_calls  # noqa: E402
from extern.videocrafter.unet import VIDEOCRAFTER2_UNET_CONFIGS, VideoCrafterUNetModel  # noqa: E402
from fourdfy.guidance.cuda_graph import GraphedForward  # noqa: E402

# Small config for CPU smoke runs (the golden parity fixture's sizes).
TINY_CONFIG: dict[str, Any] = {
    **VIDEOCRAFTER2_UNET_CONFIGS["t2v_512_v2"],
    "model_channels": 32,
    "channel_mult": [1, 2, 2, 2],
    "num_head_channels": 16,
    "context_dim": 48,
}
WEIGHT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "amp16": torch.float32}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: cuda)")
    p.add_argument("--tiny", action="store_true", help="tiny config, latents 16x24, 4 frames (CPU smoke check)")
    p.add_argument("--precisions", default=None,
                   help="comma list of fp32,bf16,fp16,amp16 (default: all on CUDA, fp32,bf16 on CPU)")
    p.add_argument("--batch", type=int, default=2, help="videos per call (default 2: cond + uncond)")
    p.add_argument("--frames", type=int, default=None, help="frames T (default 16; 4 with --tiny)")
    p.add_argument("--latent", default=None, help="latent HxW (default 40x64; 16x24 with --tiny)")
    p.add_argument("--context-len", type=int, default=77, help="text tokens (default 77)")
    p.add_argument("--iters", type=int, default=30, help="timed calls per mode (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls before timing (default 5)")
    p.add_argument("--no-cuda-graph", action="store_true", help="skip the CUDA-graph measurement")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(model) (slow to build)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    return p.parse_args(argv)


def make_inputs(args: argparse.Namespace, context_dim: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Random fp32 inputs (x, t, context, fps) at the benchmark shape."""
    g = torch.Generator(device="cpu").manual_seed(args.seed + 1)
    frames = args.frames or (4 if args.tiny else 16)
    height, width = (int(v) for v in (args.latent or ("16x24" if args.tiny else "40x64")).split("x"))
    x = torch.randn(args.batch, 4, frames, height, width, generator=g)
    t = torch.randint(20, 980, (args.batch,), generator=g)
    context = torch.randn(args.batch, args.context_len, context_dim, generator=g)
    fps = torch.full((args.batch,), 8, dtype=torch.long)
    return tuple(v.to(device) for v in (x, t, context, fps))


def forward_fn(model: torch.nn.Module, precision: str, device: torch.device) -> Callable[..., torch.Tensor]:
    """``fn(x, t, context, fps)`` for one precision (``amp16``: fp16 autocast around fp32 weights)."""
    if precision != "amp16":
        return lambda x, t, context, fps: model(x, t, context, fps)

    def fn(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, fps: torch.Tensor) -> torch.Tensor:
        # cache_enabled=False: autocast's weight-cast cache must not outlive a CUDA-graph capture
        with torch.autocast(device.type, dtype=torch.float16, cache_enabled=False):
            return model(x, t, context, fps)

    return fn


def cast_inputs(inputs: tuple[torch.Tensor, ...], dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Floating inputs in ``dtype`` (the model casts them anyway; doing it up front keeps graphs static)."""
    return tuple(v.to(dtype) if v.is_floating_point() else v for v in inputs)


def peak_bytes(device: torch.device, run: Callable[[], Any]) -> Optional[int]:
    """Peak allocated GPU bytes while ``run()`` executes (None on CPU)."""
    if device.type != "cuda":
        run()
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    run()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def bench_precision(master: torch.nn.Module, precision: str, inputs32: tuple[torch.Tensor, ...],
                    reference: Optional[torch.Tensor], args: argparse.Namespace, device: torch.device) -> dict:
    """Eager / CUDA-graph / (compiled) timings, memory and accuracy of one precision."""
    dtype = WEIGHT_DTYPES[precision]
    model = master if dtype == torch.float32 else copy.deepcopy(master).to(dtype)
    inputs = inputs32 if precision == "amp16" else cast_inputs(inputs32, dtype)
    fn = forward_fn(model, precision, device)
    result: dict[str, Any] = {"weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
                              "timings": {}, "memory": {}}
    eager_out = fn(*inputs)
    if reference is not None:
        result["rel_err_vs_fp32"] = relative_error(eager_out, reference)
    result["timings"]["eager"] = time_calls(lambda: fn(*inputs), device, args.iters, args.warmup)
    result["memory"]["eager_peak_allocated_bytes"] = peak_bytes(device, lambda: fn(*inputs))
    if device.type == "cuda" and not args.no_cuda_graph:
        graphed = GraphedForward(fn)
        result["memory"]["cuda_graph_capture_peak_allocated_bytes"] = peak_bytes(device, lambda: graphed(*inputs))
        graph_out = graphed(*inputs)
        result["cuda_graph_max_abs_diff_vs_eager"] = float((graph_out.float() - eager_out.float()).abs().max())
        result["timings"]["cuda_graph"] = time_calls(lambda: graphed(*inputs), device, args.iters, args.warmup)
        del graphed, graph_out
    if args.compile:
        compiled = torch.compile(fn)
        t0 = time.perf_counter()
        compiled(*inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        result["compile_seconds"] = time.perf_counter() - t0
        result["timings"]["compiled"] = time_calls(lambda: compiled(*inputs), device, args.iters, args.warmup)
    del model, eager_out
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Run the benchmark, print a table and write the JSON report."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available; use --device cpu --tiny for a smoke run.")
    precisions = (args.precisions or ("fp32,bf16,fp16,amp16" if device.type == "cuda" else "fp32,bf16")).split(",")
    unknown = sorted(set(precisions) - set(WEIGHT_DTYPES))
    if unknown:
        raise SystemExit(f"unknown precision(s) {unknown}; choose from {sorted(WEIGHT_DTYPES)}")
    config = TINY_CONFIG if args.tiny else VIDEOCRAFTER2_UNET_CONFIGS["t2v_512_v2"]
    torch.manual_seed(args.seed)
    with torch.device(device):  # fp32 master weights (default init), built directly on the device
        master = VideoCrafterUNetModel(**config).eval().requires_grad_(False)
    inputs32 = make_inputs(args, config["context_dim"], device)
    report: dict[str, Any] = {
        "benchmark": "videocrafter_unet",
        "card": card_name(device),
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        "config": "tiny" if args.tiny else "t2v_512_v2",
        "params": sum(p.numel() for p in master.parameters()),
        "shapes": {name: list(v.shape) for name, v in zip(("x", "t", "context", "fps"), inputs32)},
        "precisions": {},
    }
    with torch.no_grad():
        reference = None
        if any(p != "fp32" for p in precisions):  # fp32 with TF32 off as the accuracy reference
            tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            reference = master(*inputs32)
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        for precision in precisions:
            ref = None if precision == "fp32" else reference
            report["precisions"][precision] = bench_precision(master, precision, inputs32, ref, args, device)
            print_row(precision, report["precisions"][precision])

    print_table(report)
    write_report(report, "videocrafter_unet", args.out, args.tiny)
    return report


def print_row(precision: str, result: dict[str, Any]) -> None:
    """One progress line per finished precision."""
    timings = ", ".join(f"{mode} {t['median_ms']:.2f} ms" for mode, t in result["timings"].items())
    print(f"[{precision}] {timings}", flush=True)


def print_table(report: dict[str, Any]) -> None:
    """Plain-text summary of a report."""
    print(f"VideoCrafter2 UNet [{report['config']}] on {report['card']} (torch {report['torch']}, "
          f"cuda {report['cuda']}), params {report['params'] / 1e6:.2f} M, shapes {report['shapes']}")
    print(f"{'precision':<10}{'mode':<12}{'median ms':>11}{'p10 ms':>10}{'p90 ms':>10}{'peak GiB':>10}{'rel err':>10}")
    for precision, result in report["precisions"].items():
        for mode, t in result["timings"].items():
            peak = result["memory"].get("eager_peak_allocated_bytes" if mode == "eager"
                                        else "cuda_graph_capture_peak_allocated_bytes")
            peak_text = f"{peak / 2**30:.2f}" if peak else "-"
            err = result.get("rel_err_vs_fp32")
            err_text = f"{err:.2e}" if err is not None else "-"
            print(f"{precision:<10}{mode:<12}{t['median_ms']:>11.2f}{t['p10_ms']:>10.2f}{t['p90_ms']:>10.2f}"
                  f"{peak_text:>10}{err_text:>10}")


if __name__ == "__main__":
    main()
