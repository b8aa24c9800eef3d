"""Compare the images two trial folders wrote (same file names under ``save/``): max and mean absolute difference.

Used to show that a refactor leaves a run's outputs unchanged, e.g. the tiny stage-1/2 smoke chain before and
after a change, with the same seed::

    python launch.py --pipeline configs/smoke/fourdfy_tiny.yaml --train system.prompt_processor.prompt="a panda dancing" exp_root_dir=/tmp/a
    (check out the other commit, same command with exp_root_dir=/tmp/b)
    python benchmarks/compare_trials.py /tmp/a/fourdfy_stage_1_tiny/*@* /tmp/b/fourdfy_stage_1_tiny/*@*

Prints one row per image and the overall maximum in units of 1/255; exits 1 when it exceeds ``--tolerance``.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def load(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    return iio.imread(path)[..., :3].astype(np.int32)


def compare(a: Path, b: Path) -> dict[str, float]:
    """Per-image max |a - b| (in 1/255 steps) over the PNGs both ``save/`` folders hold."""
    names = sorted(p.relative_to(a / "save") for p in (a / "save").rglob("*.png"))
    result = {}
    for name in names:
        other = b / "save" / name
        if other.exists():
            result[str(name)] = float(np.abs(load(a / "save" / name) - load(other)).max())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trial_a", type=Path)
    parser.add_argument("trial_b", type=Path)
    parser.add_argument("--tolerance", type=float, default=1.0, help="largest accepted difference, in 1/255")
    parser.add_argument("--json", type=Path, help="also write the per-image differences here")
    args = parser.parse_args(argv)
    diffs = compare(args.trial_a, args.trial_b)
    if not diffs:
        print("no common images", file=sys.stderr)
        return 1
    for name, d in diffs.items():
        print(f"{d:6.1f}/255  {name}")
    worst = max(diffs.values())
    print(f"{len(diffs)} images, max difference {worst:.1f}/255 (tolerance {args.tolerance}/255)")
    if args.json:
        args.json.write_text(json.dumps({"max": worst, "images": diffs}, indent=1))
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
