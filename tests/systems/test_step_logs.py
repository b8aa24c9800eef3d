"""``system.defer_step_reads``: a step's logged values reach the loggers a step later, at their own step, with the
same values as when each step's end waits for the GPU; the learning rates (``fourdfy.loggers.StepLearningRates`` on
the host, against Lightning's ``LearningRateMonitor`` when off) under the same keys at the same steps."""

import csv
from pathlib import Path

import pytest
import torch

import launch
from fourdfy.systems.step_logs import stage, values_of

ROOT = Path(__file__).resolve().parents[2]
TINY1 = str(ROOT / "configs" / "smoke" / "fourdfy_stage_1_tiny.yaml")


def test_stage_puts_tensors_then_numbers_in_one_vector():
    loss = torch.tensor(2.5, requires_grad=True) * 2
    staged = stage({"train/loss": loss, "train/x": torch.tensor([1.5])}, {"train/n": 9.0}, torch.device("cpu"),
                   ("train/loss",), step=4, epoch=0, batch_size=1, write=True)  # fmt: skip
    assert staged.names == ["train/loss", "train/x", "train/n"] and staged.prog_bar == [True, False, False]
    assert {k: float(v) for k, v in values_of(staged).items()} == {"train/loss": 5.0, "train/x": 1.5, "train/n": 9.0}
    with pytest.raises(RuntimeError):  # not a scalar: refused, as Lightning's self.log refuses it
        stage({"train/bad": torch.ones(2)}, {}, torch.device("cpu"), step=0, epoch=0, batch_size=1, write=True)


def _rows(root: Path) -> list[dict[str, str]]:
    (path,) = root.rglob("metrics.csv")
    with path.open() as f:
        return list(csv.DictReader(f))


def test_deferred_logs_match_the_logs_of_steps_that_wait(tmp_path):
    runs = {}
    for defer in ("true", "false"):
        rc = launch.main([
            "--config", TINY1, "--train", "system.prompt_processor.prompt=a panda dancing",
            f"exp_root_dir={tmp_path / defer}", "trainer.max_steps=3", "data.single_view.n_test_views=1",
            "trainer.enable_progress_bar=false", f"system.defer_step_reads={defer}",
        ])  # fmt: skip
        assert rc == 0
        runs[defer] = _rows(tmp_path / defer)
    if not torch.cuda.is_available():  # bit for bit on a CPU (the learning-rate rows interleave differently)
        key = lambda r: tuple(sorted(r.items()))  # noqa: E731
        assert sorted(map(key, runs["true"])) == sorted(map(key, runs["false"]))
    # on a GPU two runs differ in the last bits (atomic adds in the hash grid's backward): the same rows and
    # columns, the same first step
    rows = {d: sorted((int(r["step"]), tuple(k for k, v in r.items() if v)) for r in runs[d]) for d in runs}
    assert rows["true"] == rows["false"]
    losses = {d: [r for r in runs[d] if r["train/loss"]] for d in runs}
    # every step's row, the last one written at the end of training, each at its own step
    assert [int(r["step"]) for r in losses["true"]] == [0, 1, 2]
    lrs = {d: sorted((r["step"], r["lr-AdamW/geometry.encoding"]) for r in runs[d] if r["lr-AdamW/geometry.encoding"])
           for d in runs}  # fmt: skip
    assert lrs["true"] == lrs["false"] and len(lrs["true"]) == 3
    assert all(float(r["train/loss"]) > 0 and r["epoch"] == "0" for r in losses["true"])
    assert float(losses["true"][0]["train/loss"]) == pytest.approx(float(losses["false"][0]["train/loss"]), rel=1e-3)
