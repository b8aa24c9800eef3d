"""Run ``launch.py``'s experiment with a callback that reports each rank's view of the run (for the DDP test).

    python tests/helpers/ddp_probe.py REPORT_DIR --config ... --train --gpu 0,1 key=value ...

Each rank writes ``REPORT_DIR/rank{r}.json``: the azimuths it drew, a checksum per trainable parameter and of the
occupancy grid after training. Lightning's DDP launcher re-runs this script for the other ranks.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pytorch_lightning as pl  # noqa: E402

import launch  # noqa: E402
from fourdfy.run import run_experiment  # noqa: E402


class RankReport(pl.Callback):
    def __init__(self, out: Path) -> None:
        self.out = out
        self.azimuths: list[list[float]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.azimuths.append([round(float(a), 4) for a in batch.azimuth.cpu()])

    def on_train_end(self, trainer, module) -> None:
        params = {n: float(p.detach().double().sum()) for n, p in module.named_parameters() if p.requires_grad}
        grid = module.renderer.estimator
        report = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "azimuths": self.azimuths,
            "params": params,
            "occs": float(grid.occs.double().sum()),
            "binaries": int(grid.binaries.sum()),
            "global_step": trainer.global_step,
        }
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    out = Path(sys.argv[1])
    args, extras = launch.parse_args(sys.argv[2:])
    import os

    os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu
    sys.exit(run_experiment(args, extras, extra_callbacks=(RankReport(out),)))
