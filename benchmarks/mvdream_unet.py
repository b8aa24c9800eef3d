"""Benchmark of the MVDream multi-view UNet at 4D-fy's guidance shape (random weights, no checkpoint needed).

Measures, under ``torch.no_grad``:

* eager time per forward (CUDA events, warm-up, median / p10 / p90 of N calls);
* the same forward replayed from a ``torch.cuda.CUDAGraph`` captured on static input buffers;
* optionally ``torch.compile`` (``--compile``);
* peak GPU memory (``torch.cuda.max_memory_allocated``) and the weight footprint;
* the relative L2 error of the low-precision model (default bf16) against the same weights in fp32 (TF32 off).

Default shape (one 4D-fy MVDream guidance call: (cond, uncond) x 4 views): x [8,4,32,32], t [8], camera [8,16],
context [8,77,1024], num_frames=4, full-size ``sd-v2.1-base-4view`` config.

Usage (GPU):   python benchmarks/mvdream_unet.py
Smoke (CPU):   python benchmarks/mvdream_unet.py --device cpu --tiny --iters 2 --warmup 1

Writes ``benchmarks/results/mvdream_unet_<card-slug>.json`` (override with ``--out``).
"""

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.machine import card_name, write_report  # noqa: E402
from benchmarks.timing import time_calls  # noqa: E402
from extern.mvdream.unet import MVDREAM_UNET_CONFIGS, MultiViewUNetModel  # noqa: E402

# Small config for CPU smoke runs (same family as the golden parity fixture).
TINY_CONFIG: dict[str, Any] = {
    **MVDREAM_UNET_CONFIGS["sd-v2.1-base-4view"],
    "model_channels": 32,
    "channel_mult": [1, 2, 2, 2],
    "num_head_channels": 16,
    "context_dim": 48,
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: cuda)")
    p.add_argument("--tiny", action="store_true", help="tiny config and latent 16 (CPU smoke check)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="precision of the timed model")
    p.add_argument("--batch", type=int, default=8, help="rows = objects x views x CFG (default 8)")
    p.add_argument("--num-frames", type=int, default=4, help="views per object (default 4)")
    p.add_argument("--latent", type=int, default=None, help="latent side (default 32; 16 with --tiny)")
    p.add_argument("--context-len", type=int, default=77, help="text tokens (default 77)")
    p.add_argument("--iters", type=int, default=50, help="timed calls per mode (default 50)")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls before timing (default 10)")
    p.add_argument("--no-cuda-graph", action="store_true", help="skip the CUDA-graph measurement")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(model) (slow to build)")
    p.add_argument("--no-accuracy", action="store_true", help="skip the low-precision vs fp32 comparison")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    return p.parse_args(argv)


def make_inputs(args: argparse.Namespace, context_dim: int, device: torch.device) -> dict[str, Any]:
    """Random fp32 inputs at the benchmark shape (views contiguous per object, one t per object)."""
    if args.batch % args.num_frames != 0:
        raise SystemExit(f"--batch {args.batch} must be a multiple of --num-frames {args.num_frames}")
    g = torch.Generator(device="cpu").manual_seed(args.seed + 1)
    latent = args.latent or (16 if args.tiny else 32)
    objects = args.batch // args.num_frames
    t = torch.randint(20, 980, (objects,), generator=g).repeat_interleave(args.num_frames)
    return {
        "x": torch.randn(args.batch, 4, latent, latent, generator=g).to(device),
        "timesteps": t.to(device),
        "context": torch.randn(args.batch, args.context_len, context_dim, generator=g).to(device),
        "camera": torch.randn(args.batch, 16, generator=g).to(device),
        "num_frames": args.num_frames,
    }


def cast_inputs(inputs: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """Floating inputs in ``dtype`` (the model would cast them anyway; doing it up front keeps graphs static)."""
    return {k: (v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in inputs.items()}


def capture_cuda_graph(model: torch.nn.Module, inputs: dict[str, Any]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """Capture one forward on the (static) input tensors; replaying re-runs it on whatever they then hold."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up on a side stream, as recommended before capture
        for _ in range(3):
            model(**inputs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = model(**inputs)
    return graph, static_out


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """||ours - ref|| / ||ref|| in float64."""
    ours, reference = ours.double(), reference.double()
    return float((ours - reference).norm() / reference.norm())


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Run the benchmark, print a table and write the JSON report."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available; use --device cpu --tiny for a smoke run.")
    dtype = DTYPES[args.dtype]
    config_name = "tiny" if args.tiny else "sd-v2.1-base-4view"
    config = TINY_CONFIG if args.tiny else MVDREAM_UNET_CONFIGS["sd-v2.1-base-4view"]
    torch.manual_seed(args.seed)
    is_cuda = device.type == "cuda"

    # fp32 master weights (default init), built directly on the device; the timed model is a cast copy.
    with torch.device(device):
        model_fp32 = MultiViewUNetModel(**config).eval().requires_grad_(False)
    inputs32 = make_inputs(args, config["context_dim"], device)
    model = copy.deepcopy(model_fp32).to(dtype) if dtype != torch.float32 else model_fp32
    inputs = cast_inputs(inputs32, dtype)
    params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

    report: dict[str, Any] = {
        "benchmark": "mvdream_unet",
        "card": card_name(device),
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if is_cuda else None,
        "cudnn": torch.backends.cudnn.version() if is_cuda else None,
        "config": config_name,
        "dtype": args.dtype,
        "params": params,
        "weight_bytes": weight_bytes,
        "shapes": {k: list(v.shape) for k, v in inputs.items() if isinstance(v, torch.Tensor)},
        "num_frames": args.num_frames,
        "timings": {},
        "memory": {},
    }

    with torch.no_grad():
        # --- accuracy: low precision vs the same weights in fp32 (TF32 off for the reference) -------------------
        if not args.no_accuracy and dtype != torch.float32:
            tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            reference = model_fp32(**inputs32)
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
            report["rel_err_vs_fp32"] = relative_error(model(**inputs), reference)
            del reference
        if model is not model_fp32:
            del model_fp32
        if is_cuda:
            torch.cuda.empty_cache()

        # --- eager ----------------------------------------------------------------------------------------------
        if is_cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        eager_out = model(**inputs)
        report["timings"]["eager"] = time_calls(lambda: model(**inputs), device, args.iters, args.warmup)
        if is_cuda:
            report["memory"]["eager_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
            report["memory"]["eager_peak_activation_bytes"] = torch.cuda.max_memory_allocated(device) - base

        # --- CUDA graph -----------------------------------------------------------------------------------------
        if is_cuda and not args.no_cuda_graph:
            torch.cuda.reset_peak_memory_stats(device)
            graph, graph_out = capture_cuda_graph(model, inputs)
            graph.replay()
            torch.cuda.synchronize(device)
            report["cuda_graph_max_abs_diff_vs_eager"] = float((graph_out.float() - eager_out.float()).abs().max())
            report["timings"]["cuda_graph"] = time_calls(graph.replay, device, args.iters, args.warmup)
            report["memory"]["cuda_graph_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
            del graph, graph_out

        # --- torch.compile (optional) ---------------------------------------------------------------------------
        if args.compile:
            compiled = torch.compile(model)
            t0 = time.perf_counter()
            compiled(**inputs)
            if is_cuda:
                torch.cuda.synchronize(device)
            report["compile_seconds"] = time.perf_counter() - t0
            report["timings"]["compiled"] = time_calls(lambda: compiled(**inputs), device, args.iters, args.warmup)

    print_table(report)
    write_report(report, "mvdream_unet", args.out, args.tiny)
    return report


def print_table(report: dict[str, Any]) -> None:
    """Plain-text summary of a report."""
    print(f"MVDream UNet [{report['config']}, {report['dtype']}] on {report['card']} "
          f"(torch {report['torch']}, cuda {report['cuda']})")
    print(f"params {report['params'] / 1e6:.2f} M, weights {report['weight_bytes'] / 2**30:.2f} GiB, "
          f"shapes {report['shapes']}, num_frames {report['num_frames']}")
    print(f"{'mode':<12}{'median ms':>12}{'p10 ms':>10}{'p90 ms':>10}{'iters':>8}")
    for mode, t in report["timings"].items():
        print(f"{mode:<12}{t['median_ms']:>12.3f}{t['p10_ms']:>10.3f}{t['p90_ms']:>10.3f}{t['iters']:>8d}")
    for key, value in report["memory"].items():
        print(f"{key}: {value / 2**30:.3f} GiB")
    for key in ("rel_err_vs_fp32", "cuda_graph_max_abs_diff_vs_eager", "compile_seconds"):
        if key in report:
            print(f"{key}: {report[key]:.3g}")


if __name__ == "__main__":
    main()
