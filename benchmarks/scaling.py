"""Data-parallel scaling: iterations per second of a training stage on 1..N devices (DDP through Lightning).

    python benchmarks/scaling.py --stage 1 --phase late            # GPUs 1, 2, 4, ... up to all visible
    python benchmarks/scaling.py --stage 1 --tiny --device cpu --max-devices 2 --steps 4   # CPU smoke (gloo)

Each world size runs ``benchmarks/iteration.py --devices W`` (every rank trains its own batch; the global batch
grows with W). Throughput = W x iterations per second; scaling efficiency = throughput(W) / (W x throughput(1)).
Prints a table and writes ``benchmarks/results/scaling_stage<S>_<card>.json``.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", type=int, choices=(1, 2), default=1)
    p.add_argument("--phase", choices=("early", "late"), default="late")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--max-devices", type=int, default=None, help="default: all visible GPUs")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    import torch

    n_max = args.max_devices or (torch.cuda.device_count() if args.device == "cuda" else 2)
    sizes = [w for w in (1, 2, 4, 8, 16) if w <= n_max]
    tmp = Path(args.out) / "scaling_runs"
    rows = []
    for w in sizes:
        cmd = [sys.executable, str(ROOT / "benchmarks" / "iteration.py"), "--stage", str(args.stage), "--phase",
               args.phase, "--device", args.device, "--devices", str(w), "--steps", str(args.steps), "--warmup",
               str(args.warmup), "--out", str(tmp)] + (["--tiny"] if args.tiny else [])  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            return proc.returncode
        result = json.loads(max(tmp.glob("iteration_*.json"), key=lambda f: f.stat().st_mtime).read_text())
        it_s = 1.0 / result["seconds_per_iter_median"]
        rows.append({"world_size": w, "it_per_s": it_s, "throughput": w * it_s, "card": result["card"],
                     "peak_memory_gib_per_device": result["peak_memory_gib_per_device"],
                     "torch": result["torch"], "cuda": result["cuda"]})  # fmt: skip
    base = rows[0]["throughput"]
    for r in rows:
        r["scaling_efficiency"] = r["throughput"] / (r["world_size"] * base)
    card = rows[0]["card"]
    out = {"benchmark": "scaling", "stage": args.stage, "phase": args.phase, "tiny": args.tiny, "card": card,
           "device": args.device, "rows": rows}  # fmt: skip
    slug = "".join(c if c.isalnum() else "-" for c in card.lower()).strip("-")
    path = Path(args.out) / f"scaling_stage{args.stage}{'_tiny' if args.tiny else ''}_{slug}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"{'world_size':>10} {'it/s':>8} {'batches/s':>10} {'efficiency':>10}  card: {card}")
    for r in rows:
        print(f"{r['world_size']:>10} {r['it_per_s']:>8.2f} {r['throughput']:>10.2f} {r['scaling_efficiency']:>10.2f}")
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
