"""The video branch's VAE encoder alone, in the variants that could make it faster.

    python benchmarks/vae_encoder.py                      # full-size SD VAE, ZeroScope's 16 frames at 320x576, fp16
    python benchmarks/vae_encoder.py --tiny --device cpu  # smoke run (CI)

In stage 3 the video branch is half of the iteration time and the VAE encoder most of that branch: 16 frames at
576x320 forward, then recomputed and differentiated in backward (``vae_checkpoint``). Its forward took 92 ms on an
H200 against some 20-40 ms that its ~12 TFLOP would need. This script times exactly the training path,
``video_sds.encode_frames`` with the VAE posterior sample, every frame with gradient, for each combination of:

- memory layout of the encoder's weights and input: ``nchw`` (PyTorch's default; cuDNN's fp16 kernels then transpose
  every activation to NHWC and back) or ``channels_last``;
- ``torch.backends.cudnn.benchmark`` off (default) or on (cuDNN times its algorithms per shape once);
- frames per checkpointed encoder call (``vae_checkpoint_frames``; 0 = no checkpointing, all activations kept);
- ``--compile off on``: the encoder eager, or through ``torch.compile`` (Inductor, static shapes; the first call's
  time, compilation included, is reported as ``compile_s``).

Per combination: forward ms (no grad), forward + backward ms (the training step's encoder work), peak memory, and
the largest difference of latents and frame gradients from the ``nchw`` / benchmark-off run with the same frames
per call (a layout must not change the result beyond summation order). Prints a table, writes
``benchmarks/results/vae_encoder_<card>.json``.
"""

import argparse
import functools
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.machine import card_name, slug, versions  # noqa: E402
from benchmarks.timing import time_calls  # noqa: E402
from fourdfy.guidance import video_sds  # noqa: E402

LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--tiny", action="store_true", help="the tiny stand-in VAE at 4 frames of 32x48 (CPU smoke run)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, nargs=2, default=(320, 576), metavar=("H", "W"))
    p.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16", help="weights (fp32 on CPU)")
    p.add_argument("--chunks", type=int, nargs="+", default=(4, 16, 0),
                   help="frames per checkpointed call to time (0: no checkpointing)")  # fmt: skip
    p.add_argument("--layouts", nargs="+", choices=tuple(LAYOUTS), default=tuple(LAYOUTS))
    p.add_argument("--cudnn-benchmark", nargs="+", choices=("off", "on"), default=("off", "on"))
    p.add_argument("--compile", nargs="+", choices=("off", "on"), default=("off",),
                   help="the encoder eager and/or through torch.compile")  # fmt: skip
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    if args.tiny:
        args.frames, args.size = 4, (32, 48)
    if args.device == "cpu":
        args.dtype, args.cudnn_benchmark = "fp32", ("off",)  # cuDNN and half-precision convolutions are CUDA's
    return args


def build_vae(tiny: bool, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The SD KL-f8 VAE (ZeroScope's, VideoCrafter2's and VSD's architecture) with random weights, frozen."""
    from fourdfy.stand_ins import full_size, tiny as tiny_stand_ins

    vae = tiny_stand_ins.tiny_vae() if tiny else full_size.random_sd_vae()
    return vae.to(device=device, dtype=dtype).eval().requires_grad_(False)


def encode_call(vae: torch.nn.Module, images: torch.Tensor, chunk: int, dtype: torch.dtype, seed: int, encoder=None):
    """``encode_frames`` as the video guidances call it: every frame with gradient, ``chunk`` frames per
    checkpointed call, latents from the posterior (noise from a generator seeded with ``seed``). ``encoder``
    replaces ``vae.encoder`` (a compiled one); the moments are then ``quant_conv(encoder(x))``, what
    ``vae.encode(x).latent_dist.parameters`` computes."""

    def moments(x: torch.Tensor) -> torch.Tensor:
        if encoder is None:
            return vae.encode(x.to(dtype)).latent_dist.parameters
        h = encoder(x.to(dtype))
        return h if vae.quant_conv is None else vae.quant_conv(h)

    generator = torch.Generator(device=images.device).manual_seed(seed)
    sample = functools.partial(video_sds.vae_posterior_sample, scaling_factor=vae.config.scaling_factor,
                               generator=generator)  # fmt: skip
    return video_sds.encode_frames(moments, images, None, sample, checkpoint_frames=chunk)


def run_variant(
    vae, frames: torch.Tensor, upstream: torch.Tensor, layout: str, chunk: int, dtype, args, compiled: bool = False
) -> dict:
    """Time one variant; returns its row with the latents and frame gradient of one seeded call."""
    device = frames.device
    fmt = LAYOUTS[layout]
    vae.to(memory_format=fmt)
    images = frames.contiguous(memory_format=fmt)
    encoder = torch.compile(vae.encoder, dynamic=False) if compiled else None

    def forward() -> None:
        with torch.no_grad():
            encode_call(vae, images, chunk, dtype, seed=0, encoder=encoder)

    def forward_backward() -> tuple[torch.Tensor, torch.Tensor]:
        x = images.detach().requires_grad_(True)
        z = encode_call(vae, x, chunk, dtype, seed=0, encoder=encoder)
        (z * upstream).sum().backward()
        return z.detach(), x.grad

    compile_s = None
    if compiled:  # the first calls compile (forward without grad, then forward and backward): timed apart
        start = time.perf_counter()
        forward()
        forward_backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        compile_s = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    fwd = time_calls(forward, device, args.iters, args.warmup)
    both = time_calls(forward_backward, device, args.iters, args.warmup)
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**30 if device.type == "cuda" else None
    z, grad = forward_backward()
    return {"forward_ms": fwd["median_ms"], "forward_backward_ms": both["median_ms"], "peak_gib": peak,
            "compile_s": compile_s, "_z": z.float(), "_grad": grad.float()}  # fmt: skip


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device(args.device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    vae = build_vae(args.tiny, device, dtype)
    g = torch.Generator().manual_seed(7)
    h, w = args.size
    # smooth frames in [-1, 1], like resized renders
    small = torch.rand(args.frames, 3, max(h // 16, 1), max(w // 16, 1), generator=g)
    frames = (torch.nn.functional.interpolate(small, size=(h, w), mode="bilinear") * 2 - 1).to(device)
    latent = (args.frames, vae.config.latent_channels, h // 8, w // 8)
    upstream = torch.randn(latent, generator=g).to(device)
    rows, references = [], {}
    for comp, bench, layout, chunk in itertools.product(args.compile, args.cudnn_benchmark, args.layouts, args.chunks):
        torch.backends.cudnn.benchmark = bench == "on"
        row = run_variant(vae, frames, upstream, layout, chunk, dtype, args, compiled=comp == "on")
        z, grad = row.pop("_z"), row.pop("_grad")
        ref = references.setdefault(chunk, (z, grad))
        row.update(compiled=comp == "on", cudnn_benchmark=bench, layout=layout, frames_per_call=chunk,
                   latent_max_diff=float((z - ref[0]).abs().max()), grad_max_diff=float((grad - ref[1]).abs().max()),
                   grad_max_abs=float(ref[1].abs().max()))  # fmt: skip
        rows.append(row)
        print(f"  compile {comp:<3} cudnn.benchmark {bench:<3} {layout:<13} frames/call {chunk:>2}: forward {row['forward_ms']:8.2f} ms"
              f"  fwd+bwd {row['forward_backward_ms']:8.2f} ms", flush=True)  # fmt: skip
    torch.backends.cudnn.benchmark = False
    report = {"benchmark": "vae_encoder", "card": card_name(), "device": args.device, "dtype": args.dtype,
              "frames": args.frames, "size": list(args.size), "tiny": args.tiny, "iters": args.iters,
              **versions("diffusers"), "rows": rows}  # fmt: skip
    print_table(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"vae_encoder{'_tiny' if args.tiny else ''}_{slug(report['card'])}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"written {path}")
    return report


def print_table(report: dict) -> None:
    print(f"\nVAE encoder, {report['frames']} frames at {report['size'][0]}x{report['size'][1]}, {report['dtype']}, "
          f"{report['card']}:")  # fmt: skip
    print(f"{'compiled':>8} {'cudnn.bench':>11} {'layout':>13} {'frames/call':>11} {'fwd ms':>9} {'fwd+bwd ms':>11} {'peak GiB':>9}"
          f" {'max |dz|':>10} {'max |dgrad|':>12}")  # fmt: skip
    for r in report["rows"]:
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        print(f"{str(r.get('compiled', False)):>8} {r['cudnn_benchmark']:>11} {r['layout']:>13} {r['frames_per_call']:>11} {r['forward_ms']:>9.2f} "
              f"{r['forward_backward_ms']:>11.2f} {peak:>9} {r['latent_max_diff']:>10.2e} {r['grad_max_diff']:>12.2e}")


if __name__ == "__main__":
    main()
