"""How much Python's cyclic garbage collector has to walk in a stage's system (random weights, built on the CPU).

Builds the system of ``--config`` (default ``configs/fourdfy_stage_3.yaml``) with the full-size random-weight
networks that ``benchmarks/iteration.py`` uses, then reports the objects the collector tracks and the time of a
full collection (``gc.collect()``, median of ``--repeats``) before building it, after, and after ``gc.freeze()``
(what ``freeze_gc: true`` does when training starts; :mod:`fourdfy.garbage_collection`).

Usage:      python benchmarks/gc_objects.py                 (stage 3 at full size: about 15 GB of CPU memory)
Smoke:      python benchmarks/gc_objects.py --tiny          (configs/smoke/fourdfy_stage_3_tiny.yaml)

Prints a table and writes ``<out>/gc_objects_<config name>_<processor>.json``.
"""

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "benchmarks")]

from iteration import RANDOM_OVERRIDES, VIDEO_OVERRIDES  # noqa: E402
from machine import slug, versions  # noqa: E402


def full_collection_ms(repeats: int) -> float:
    """Median milliseconds of ``gc.collect()`` (a full, generation-2 collection)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        gc.collect()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "fourdfy_stage_3.yaml"))
    parser.add_argument("--tiny", action="store_true", help="the tiny stage-3 smoke config instead of --config")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results"))
    args = parser.parse_args()

    from fourdfy.experiment import load_config, load_yaml_tree
    from fourdfy.registry import build

    if args.tiny:
        config, overrides = REPO_ROOT / "configs" / "smoke" / "fourdfy_stage_3_tiny.yaml", []
    else:
        config = Path(args.config).resolve()
        video = (load_yaml_tree(config).get("system") or {}).get("guidance_type_video")
        overrides = [*RANDOM_OVERRIDES, *VIDEO_OVERRIDES.get(video, [])]
    cfg, _ = load_config([str(config)], [*overrides, "system.prompt_processor.prompt=a panda dancing"])
    rows = {"before the system": (len(gc.get_objects()), full_collection_ms(args.repeats))}
    system = build("system", cfg.system_type, cfg.system, "system")
    rows["with the system"] = (len(gc.get_objects()), full_collection_ms(args.repeats))
    gc.freeze()
    rows["after gc.freeze()"] = (len(gc.get_objects()), full_collection_ms(args.repeats))
    frozen = gc.get_freeze_count()
    gc.unfreeze()
    del system

    print(f"{config.name}: {frozen} objects frozen")
    print(f"{'':>20} {'tracked objects':>16} {'full collection ms':>19}")
    for name, (objects, ms) in rows.items():
        print(f"{name:>20} {objects:>16} {ms:>19.1f}")
    machine = slug(platform.processor() or platform.machine())
    out = Path(args.out) / f"gc_objects_{config.stem}_{machine}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "gc_objects", "config": str(config.relative_to(REPO_ROOT)), "machine": platform.platform(),
        **versions(), "frozen": frozen,
        "rows": {k: {"tracked_objects": o, "full_collection_ms": ms} for k, (o, ms) in rows.items()},
    }, indent=1))  # fmt: skip
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
