"""Benchmark of 4D-fy's hash grids and the density MLP behind them (random weights, no checkpoint needed).

What is timed, forward and forward + backward (gradients to the grid's ``params``, or to the MLP's weights and
inputs), at ``--points`` points (default 1 M):

* the static 3-D grid and the 4-D (x, t) grid of ``HashGridSpatialTime``, with the ``pos_encoding_config`` read from
  ``--config`` (default ``configs/fourdfy_stage_3.yaml``, which extends stages 2 and 1: 16 levels, 2 features per
  level, log2 hashmap size 19, base resolution 16, per-level scale 1.447 for both grids), in every implementation
  that can run here: ``torch`` always, ``triton`` when Triton imports and the input is on CUDA, ``tcnn`` when
  tinycudann imports and the input is on CUDA; Triton also with scalar atomics (where vector atomics run), without
  and with more private gradient copies of the coarse levels (``PRIVATE_COPIES``, ``PRIVATE_BYTES``) and in two
  other launch orders than level-major (``INTERLEAVE_BYTES``: the coarse levels level-fastest, every level);
* the density MLP (``system.geometry.mlp_network_config`` of the same YAML, 4D-fy's 32 -> 64 -> 1 ReLU MLP) on
  ``[N, 32]`` standard-normal features (a trained grid's scale; the fresh grid's ``U(-1e-4, 1e-4)`` table would feed
  it values near fp16's subnormal range): ``precision: fp32`` vs the reduced-precision mode under autocast (``precision: auto``
  under fp16 autocast on CUDA, as ``trainer.precision: 16-mixed`` runs it; on CPU ``precision: autocast`` under bf16,
  since ``auto`` keeps CPU in fp32), with the relative error of the reduced output against fp32.

``--layout`` places the points: ``uniform`` (default; independent uniform points, the fewest atomic collisions in
the backward), ``video`` (what a video step renders: ``--frames`` frames of one camera, frame-major, so every
spatial point recurs once per frame, at the frame's time for the 4-D grid) or ``clustered`` (every point inside a
ball of radius 0.1 at the centre, like samples on a small object). Those two measure how much the backward's
atomic scatter slows when many points add into the same table rows.

Timing: ``--warmup`` untimed calls, then ``--repeats`` timed calls; median / p10 / p90 milliseconds (CUDA events on
GPU, ``perf_counter`` on CPU). Peak memory: on CUDA the peak of ``torch.cuda.max_memory_allocated`` during the timed
calls above what was allocated before them; on CPU the process's peak resident set (``ru_maxrss``, an upper bound).

Usage (GPU):   python benchmarks/hash_grid.py
Smoke (CPU):   python benchmarks/hash_grid.py --device cpu --points 20000 --repeats 2

Prints a table and writes ``<out>/hash_grid_<card-slug>.json`` (``--out`` is a folder, default
``benchmarks/results``) with the card name, versions (torch, CUDA, Triton), the configs and one row per measurement.
"""

import argparse
import contextlib
import json
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional
from unittest import mock

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.machine import card_name, slug, versions  # noqa: E402
from benchmarks.timing import time_calls  # noqa: E402
from fourdfy.experiment import load_yaml_tree  # noqa: E402
from fourdfy.field_components import hash_grid_triton  # noqa: E402
from fourdfy.field_components.encoding_configs import parse_encoding_config, parse_mlp_config  # noqa: E402
from fourdfy.field_components.hash_grid import HashGrid, tcnn_module  # noqa: E402
from fourdfy.field_components.networks import get_mlp  # noqa: E402
from fourdfy.geometry.implicit_volume import DEFAULT_MLP, DEFAULT_POS_ENCODING  # noqa: E402

GRID_KEYS = ("n_levels", "n_features_per_level", "log2_hashmap_size", "base_resolution", "per_level_scale")
"""The hyper-parameters of a grid taken from the YAML (``static``/``num_frames`` concern the system, not the grid)."""


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: cuda)")
    p.add_argument("--points", type=int, default=1_000_000, help="points per call (default 1,000,000)")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per measurement; the median is reported")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before timing (default 3)")
    p.add_argument("--config", type=Path, default=REPO_ROOT / "configs" / "fourdfy_stage_3.yaml",
                   help="YAML whose system.geometry pos_encoding_config / mlp_network_config are used")  # fmt: skip
    p.add_argument("--layout", choices=("uniform", "video", "clustered"), default="uniform",
                   help="where the points lie (see above); the JSON name gets _<layout> unless uniform")
    p.add_argument("--frames", type=int, default=16, help="frames of the video layout (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results", help="folder of the JSON")
    args = p.parse_args(argv)
    if args.points < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--points and --repeats must be >= 1, --warmup >= 0")
    return args


def field_configs(path: Path) -> tuple[dict, dict]:
    """``(grid hyper-parameters, density MLP dict)`` of ``system.geometry`` in a YAML (following ``extends:``);
    absent keys take the implicit-volume defaults."""
    geometry = load_yaml_tree(path).get("system", {}).get("geometry", {})
    pos = {**DEFAULT_POS_ENCODING, **geometry.get("pos_encoding_config", {})}
    grid = {k: pos[k] for k in GRID_KEYS}
    parse_encoding_config({"otype": "HashGrid", **grid}, "pos_encoding_config")  # validate
    mlp = {**DEFAULT_MLP, **geometry.get("mlp_network_config", {})}
    mlp.pop("precision", None)  # set per measured mode below
    parse_mlp_config(mlp, "mlp_network_config")
    return grid, mlp


def implementations(device: torch.device, grid: HashGrid) -> list[str]:
    """The grid implementations that can run on ``device`` here (torch always)."""
    impls = ["torch"]
    if device.type == "cuda" and hash_grid_triton.triton_available() and hash_grid_triton.supports(grid.layout):
        impls.append("triton")
    if device.type == "cuda" and tcnn_module() is not None:
        impls.append("tcnn")
    return impls


def sync(device: torch.device) -> None:
    """Wait for the device (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> dict[str, float]:
    """Median / p10 / p90 milliseconds per call of ``fn`` and its peak memory in MiB (see the module docstring)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    out = time_calls(fn, device, repeats, warmup=0)
    if device.type == "cuda":
        peak_mib = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        peak_mib = maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    out["repeats"] = out.pop("iters")
    return out | {"peak_mem_mib": peak_mib}


def sample_points(n: int, dims: int, layout: str, frames: int, generator: torch.Generator) -> torch.Tensor:
    """``[n, dims]`` points in ``[0, 1]^dims`` placed by ``layout`` (see the module docstring); for the 4-D grid
    the last column is time."""
    if layout == "uniform":
        return torch.rand(n, dims, generator=generator)
    if layout == "clustered":
        direction = torch.nn.functional.normalize(torch.randn(n, dims, generator=generator), dim=-1)
        radius = 0.1 * torch.rand(n, 1, generator=generator) ** (1.0 / dims)
        return 0.5 + direction * radius
    per_frame = -(-n // frames)
    spatial = torch.rand(per_frame, 3, generator=generator).repeat(frames, 1)[:n]  # frame-major: frame f is block f
    if dims == 3:
        return spatial
    t = (torch.arange(frames, dtype=torch.float32) / max(frames - 1, 1)).repeat_interleave(per_frame)[:n, None]
    return torch.cat([spatial, t], dim=-1)


def triton_variants(device: torch.device, grid: HashGrid) -> list[tuple[str, dict[str, Any]]]:
    """``(label, settings of hash_grid_triton)`` of the Triton kernels' variants timed beside the default: Triton's
    scalar atomics in the backward (what the vector atomics gain, where they run), the backward without and with
    more private gradient copies of the coarse levels, and two launch orders other than the default level-major
    one."""
    variants = [("no private gradient copies", {"PRIVATE_COPIES": 1}),
                ("64 private copies, 4 MiB", {"PRIVATE_COPIES": 64, "PRIVATE_BYTES": 4 * 2**20}),
                ("coarse levels interleaved (8 MiB)", {"INTERLEAVE_BYTES": 8 * 2**20}),
                ("all levels interleaved", {"INTERLEAVE_BYTES": 2**40})]  # fmt: skip
    if hash_grid_triton.uses_vector_atomics(grid.layout.n_features_per_level, device):
        variants.insert(0, ("scalar atomics", {"VECTOR_ATOMICS": False}))
    return variants


def bench_grids(args: argparse.Namespace, device: torch.device, grid_cfg: dict) -> list[dict]:
    """Rows for the 3-D and 4-D grids in every available implementation."""
    rows: list[dict] = []

    def timed(fn: Callable[[], Any]) -> dict[str, float]:
        return measure(fn, device, args.repeats, args.warmup)

    for dims, name in ((3, "grid3 (static)"), (4, "grid4 (x, t)")):
        g = torch.Generator(device="cpu").manual_seed(args.seed + dims)
        x = sample_points(args.points, dims, args.layout, args.frames, g).to(device)
        grad = torch.randn(args.points, grid_cfg["n_levels"] * grid_cfg["n_features_per_level"], generator=g).to(device)
        torch.manual_seed(args.seed)
        reference = HashGrid(dims, **grid_cfg, implementation="torch").to(device)
        for impl in implementations(device, reference):
            grid = HashGrid(dims, **grid_cfg, implementation=impl).to(device)
            grid.load_state_dict(reference.state_dict())

            def forward(grid: HashGrid = grid) -> None:
                with torch.no_grad():
                    grid(x)

            def forward_backward(grid: HashGrid = grid) -> None:
                grid.params.grad = None
                grid(x).backward(grad)

            def row(mode: str, fwd: dict, fb: dict) -> dict:
                return {"part": name, "mode": mode, "points": args.points, "n_params": grid.layout.n_params,
                        "forward": fwd, "forward_backward": fb}  # fmt: skip

            fwd = timed(forward)
            rows.append(row(impl, fwd, timed(forward_backward)))
            for label, settings in triton_variants(device, grid) if impl == "triton" else []:
                with contextlib.ExitStack() as stack:
                    for setting, value in settings.items():
                        stack.enter_context(mock.patch.object(hash_grid_triton, setting, value))
                    # the forward kernel has no atomics: only a launch order changes its time
                    fwd_variant = timed(forward) if "INTERLEAVE_BYTES" in settings else fwd
                    rows.append(row(f"triton, {label}", fwd_variant, timed(forward_backward)))
            del grid
    return rows


def bench_mlp(args: argparse.Namespace, device: torch.device, mlp_cfg: dict, width: int) -> list[dict]:
    """Rows for the density MLP on ``width`` input features: fp32 and the reduced-precision mode under autocast."""
    reduced_precision = "auto" if device.type == "cuda" else "autocast"
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    features = torch.randn(args.points, width, generator=torch.Generator().manual_seed(args.seed + 5)).to(device)
    torch.manual_seed(args.seed)
    nets = {mode: get_mlp(width, 1, {**mlp_cfg, "precision": mode}, "mlp").to(device)
            for mode in ("fp32", reduced_precision)}  # fmt: skip
    nets[reduced_precision].load_state_dict(nets["fp32"].state_dict())
    inputs = features.clone().requires_grad_(True)
    upstream = torch.randn(features.shape[0], 1, generator=torch.Generator().manual_seed(args.seed)).to(device)
    outputs: dict[str, torch.Tensor] = {}
    rows = []
    for mode, net in nets.items():
        def call(net=net) -> torch.Tensor:
            with torch.autocast(device.type, dtype=amp_dtype):
                return net(inputs)

        def forward() -> None:
            with torch.no_grad():
                call()

        def forward_backward(net=net) -> None:
            net.zero_grad(set_to_none=True)
            inputs.grad = None
            call(net).backward(upstream)

        with torch.no_grad():
            outputs[mode] = call()
        fwd = measure(forward, device, args.repeats, args.warmup)
        fb = measure(forward_backward, device, args.repeats, args.warmup)
        rows.append({"part": "density MLP", "mode": f"precision={mode}, {str(amp_dtype)[6:]} autocast",
                     "precision": mode, "autocast_dtype": str(amp_dtype)[6:], "points": features.shape[0],
                     "output_dtype": str(outputs[mode].dtype)[6:], "forward": fwd, "forward_backward": fb})  # fmt: skip
    ref = outputs["fp32"].double()
    err = float((outputs[reduced_precision].double() - ref).norm() / ref.norm().clamp_min(1e-30))
    rows[-1]["rel_err_vs_fp32"] = err
    rows[0]["rel_err_vs_fp32"] = 0.0
    return rows


def print_table(report: dict) -> None:
    """One line per measurement."""
    print(f"{report['card']}  torch {report['versions']['torch']}  cuda {report['versions']['cuda']}  "
          f"triton {report['versions']['triton']}  points {report['args']['points']}  layout {report['layout']}")  # fmt: skip
    head = f"{'part':<16} {'mode':<38} {'fwd ms':>9} {'fwd+bwd ms':>11} {'peak MiB':>9} {'rel err':>9}"
    print(head)
    print("-" * len(head))
    for r in report["rows"]:
        err = r.get("rel_err_vs_fp32")
        print(f"{r['part']:<16} {r['mode']:<38} {r['forward']['median_ms']:>9.3f} "
              f"{r['forward_backward']['median_ms']:>11.3f} {r['forward_backward']['peak_mem_mib']:>9.1f} "
              f"{'' if err is None else f'{err:.2e}':>9}")  # fmt: skip


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Run the benchmark, print a table and write the JSON report; returns the report."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (use --device cpu for the smoke run)")
    grid_cfg, mlp_cfg = field_configs(args.config)
    grid_rows = bench_grids(args, device, grid_cfg)
    mlp_rows = bench_mlp(args, device, mlp_cfg, grid_cfg["n_levels"] * grid_cfg["n_features_per_level"])
    card = card_name(device)
    report = {
        "benchmark": "hash_grid",
        "layout": args.layout,
        "card": card,
        "device": str(device),
        "versions": versions("triton", "tinycudann"),
        "args": {"points": args.points, "layout": args.layout, "frames": args.frames, "repeats": args.repeats,
                 "warmup": args.warmup, "seed": args.seed,
                 "config": str(args.config.resolve().relative_to(REPO_ROOT)) if args.config.resolve().is_relative_to(
                     REPO_ROOT) else str(args.config)},  # fmt: skip
        "grid_config": grid_cfg,
        "mlp_config": mlp_cfg,
        "peak_memory": "cuda max_memory_allocated above the baseline" if device.type == "cuda"
        else "process peak RSS (upper bound)",
        "rows": grid_rows + mlp_rows,
    }
    print_table(report)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.layout == "uniform" else f"_{args.layout}"
    path = args.out / f"hash_grid_{slug(card)}{suffix}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
