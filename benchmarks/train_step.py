"""Per-iteration time and peak memory of a 4D-fy training stage at its real settings, with full-size random-weight
networks (no downloads: the benchmark machines have no network).

    python benchmarks/train_step.py --stage 1 --phase early     # MVDream: 8 views at 64x64 (steps < 5000)
    python benchmarks/train_step.py --stage 1 --phase late      # MVDream: 4 views at 256x256
    python benchmarks/train_step.py --stage 2 --phase late      # MVDream (4 views, 256^2) 50 % / VSD 50 %
    python benchmarks/train_step.py --stage 3                   # MVDream 50 % / VSD 25 % / ZeroScope video 25 %
    python benchmarks/train_step.py --config configs/fourdfy_stage_3_vc.yaml   # any stage config
    python benchmarks/train_step.py --stage 1 --profile 3       # also print a torch.profiler table of 3 steps
    python benchmarks/train_step.py --stage 1 --tiny --device cpu --steps 3   # smoke run of this script

It runs the real Lightning training loop (``fourdfy-system``, data module, renderer, guidances, AdamW) on the stage's
config with the pretrained networks replaced by reserved random-weight names (``fourdfy/stand_ins/full_size.py``),
times every iteration (CUDA-synchronised) after a warm-up, and writes a JSON to ``benchmarks/results/``.
Validation, test and checkpoints are switched off. Timings depend on the random field's occupancy (the number of
samples per ray), which is reported too.
"""

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RANDOM_OVERRIDES = [
    "system.prompt_processor.pretrained_model_name_or_path=random-init-sd-2-1-text",
    "system.prompt_processor_multi_view.pretrained_model_name_or_path=random-init-sd-2-1-text",
    "system.prompt_processor.spawn=false",
    "system.prompt_processor_multi_view.spawn=false",
    "system.guidance_multi_view.model_name=random-init-sd-v2.1-base-4view",
    "system.guidance.pretrained_model_name_or_path=random-init-sd-2-1-base",
    "system.guidance.pretrained_model_name_or_path_lora=random-init-sd-2-1",
]
VIDEO_OVERRIDES = {
    "zeroscope-guidance": [
        "system.guidance_video.pretrained_model_name_or_path=random-init-zeroscope-v2-576w",
        "system.prompt_processor_video.pretrained_model_name_or_path=random-init-zeroscope-v2-576w",
        "system.prompt_processor_video.spawn=false",
    ],
    "videocrafter-guidance": [
        "system.guidance_video.pretrained_model_name_or_path=random-init-videocrafter2",
        "system.prompt_processor_video.pretrained_model_name_or_path=random-init-videocrafter2",
        "system.prompt_processor_video.spawn=false",
    ],
}
"""Random full-size video networks, by the stage's ``system.guidance_type_video``."""


def card_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", type=int, choices=(1, 2, 3), default=1)
    parser.add_argument("--config", help="a stage config (overrides --stage / --low-vram), e.g. configs/fourdfy_stage_3_vc.yaml")
    parser.add_argument("--phase", choices=("early", "late"), default="late",
                        help="multi-view resolution phase: early = steps < 5000 (64^2; 8 views in stage 1), "
                             "late = 4 views at 256^2")
    parser.add_argument("--profile", type=int, default=0, help="profile this many steps after the timed ones")
    parser.add_argument("--low-vram", action="store_true", help="use the _low_vram config")
    parser.add_argument("--steps", type=int, default=30, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations first")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--devices", type=int, default=1, help="data-parallel processes (DDP; gloo on CPU)")
    parser.add_argument("--tiny", action="store_true", help="tiny smoke config instead of full-size networks")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--tag", default="", help="suffix of the JSON file name (e.g. the hash-grid backend)")
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    args = parser.parse_args()

    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import pytorch_lightning as pl
    import torch

    from fourdfy.experiment import load_config
    from fourdfy.registry import build

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device; use --device cpu")
    variant = "_low_vram" if args.low_vram else ""
    if args.tiny:
        config = ROOT / "configs" / "smoke" / f"fourdfy_stage_{args.stage}_tiny.yaml"
        overrides = []
    else:
        config = ROOT / "configs" / f"fourdfy_stage_{args.stage}{variant}.yaml"
        if args.config:
            config = Path(args.config).resolve()
        overrides = list(RANDOM_OVERRIDES)
        from fourdfy.experiment import load_yaml_tree

        video_type = (load_yaml_tree(config).get("system") or {}).get("guidance_type_video")
        overrides += VIDEO_OVERRIDES.get(video_type, [])
    if True:
        # pick the resolution phase directly: milestone at step 0 = the late phase from the first step
        overrides.append("data.multi_view.resolution_milestones=[0]" if args.phase == "late"
                         else "data.multi_view.resolution_milestones=[1000000]")  # fmt: skip
    total = args.warmup + args.steps + args.profile
    overrides += ["system.prompt_processor.prompt=a panda dancing", f"trainer.max_steps={total}",
                  "trainer.val_check_interval=1000000", *args.overrides]  # fmt: skip
    cfg, _ = load_config([str(config)], overrides)
    import os as _os

    # per-rank seeds, as launch.py does (LOCAL_RANK is set in the worker processes Lightning starts)
    pl.seed_everything(cfg.seed + int(_os.environ.get("LOCAL_RANK", "0")), verbose=False)
    t0 = time.perf_counter()
    dm = build("datamodule", cfg.data_type, cfg.data, "data")
    system = build("system", cfg.system_type, cfg.system, "system")
    build_s = time.perf_counter() - t0

    cuda = args.device == "cuda"

    class Timer(pl.Callback):
        def __init__(self) -> None:
            self.rows: list[dict] = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if cuda:
                torch.cuda.synchronize()
            if args.profile and batch_idx == args.warmup + args.steps:
                activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
                self.profiler = torch.profiler.profile(activities=activities)
                self.profiler.__enter__()
            self.start = time.perf_counter()
            self.kind = batch.kind.value

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            if cuda:
                torch.cuda.synchronize()
            metrics = trainer.callback_metrics
            self.rows.append({
                "step": trainer.global_step, "kind": self.kind, "seconds": time.perf_counter() - self.start,
                "num_samples": float(metrics.get("train/num_samples", float("nan"))),
            })  # fmt: skip
            if cuda and batch_idx == args.warmup - 1:
                torch.cuda.reset_peak_memory_stats()
            if args.profile and batch_idx == total - 1:
                self.profiler.__exit__(None, None, None)
                key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
                print(self.profiler.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=60))

    timer = Timer()
    trainer_cfg = {k: v for k, v in cfg.trainer.items() if k not in ("val_check_interval", "enable_progress_bar")}
    strategy: object = "auto"
    if args.devices > 1:
        from pytorch_lightning.strategies import DDPStrategy

        strategy = DDPStrategy(find_unused_parameters=True, process_group_backend="nccl" if cuda else "gloo")
    trainer = pl.Trainer(
        accelerator="gpu" if cuda else "cpu", devices=args.devices, strategy=strategy, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
        inference_mode=False, limit_val_batches=0, use_distributed_sampler=False, **trainer_cfg,
    )  # fmt: skip
    trainer.fit(system, datamodule=dm)
    if trainer.global_rank != 0:
        return 0

    timed = timer.rows[args.warmup : args.warmup + args.steps]
    per_kind: dict[str, list[float]] = {}
    for r in timed:
        per_kind.setdefault(r["kind"], []).append(r["seconds"])
    result = {
        "benchmark": "train_step",
        "stage": args.stage,
        "world_size": args.devices,
        "phase": args.phase,
        "config": str(config.relative_to(ROOT)),
        "overrides": overrides,
        "tiny": args.tiny,
        "card": card_name(),
        "device": args.device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "build_seconds": build_s,
        "warmup": args.warmup,
        "steps": len(timed),
        "seconds_per_iter_median": statistics.median(r["seconds"] for r in timed),
        "seconds_per_iter_mean": statistics.mean(r["seconds"] for r in timed),
        "seconds_per_iter_by_kind": {k: {"median": statistics.median(v), "mean": statistics.mean(v), "n": len(v)}
                                     for k, v in per_kind.items()},  # fmt: skip
        "samples_per_iter_median": statistics.median(r["num_samples"] for r in timed),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "peak_memory_gib_per_device": (
            [torch.cuda.max_memory_allocated(i) / 2**30 for i in range(torch.cuda.device_count())] if cuda else None
        ),
        "rows": timed,
    }
    name = f"train_step_{config.stem.replace('fourdfy_', '')}_{args.phase}" if args.config else (
        f"train_step_stage{args.stage}{variant}_{args.phase}")
    name += f"{'_' + args.tag if args.tag else ''}{'_tiny' if args.tiny else ''}{f'_ws{args.devices}' if args.devices > 1 else ''}_{slug(result['card'])}.json"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(result, indent=1))
    print(f"\n{'stage':>6} {'phase':>6} {'card':>28} {'s/it med':>9} {'s/it mean':>9} {'it/s':>6} {'peak GiB':>8}")
    peak = f"{result['peak_memory_gib']:.2f}" if cuda else "-"
    med = result["seconds_per_iter_median"]
    label = config.stem.replace("fourdfy_", "") if args.config else str(args.stage)
    print(f"{label:>6} {str(result['phase']):>6} {result['card'][:28]:>28} {med:>9.4f} "
          f"{result['seconds_per_iter_mean']:>9.4f} {1 / med:>6.2f} {peak:>8}")  # fmt: skip
    for k, v in result["seconds_per_iter_by_kind"].items():
        print(f"  {k:>12}: median {v['median']:.4f} s  mean {v['mean']:.4f} s  n={v['n']}")
    print(f"  samples/iter (median): {result['samples_per_iter_median']:.0f}; written {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
