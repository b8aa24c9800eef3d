"""4D-fy's effective VSD schedule in stage 2 (issue 11, item 2).

4D-fy's ``system.weights`` calls every part's ``update_step`` with the loaded checkpoint's step (10000 after stage
1); VSD's max-step anneal is one-way, so 4D-fy's stage 2 samples t in [20, 500] from its first step although its
config says ``max_step_percent: 0.98``. That is the default here (``max_step_latch: true``); ``false`` runs the
configured schedule.
"""

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

import launch
from fourdfy.experiment import load_config
from fourdfy.registry import build
from fourdfy.run import run_experiment

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke"
PROMPT = "system.prompt_processor.prompt=a panda dancing"
FOURDFY_ANNEAL = "system.guidance.anneal_start_step=5000"  # 4D-fy's value (the tiny overlay shortens it to 10)


def write_stage1_checkpoint(path: Path, global_step: int) -> Path:
    """A stage-1 checkpoint as the end of 4D-fy's stage 1 leaves it (only its weights and step matter here)."""
    cfg, _ = load_config([str(SMOKE / "fourdfy_stage_1_tiny.yaml")], [PROMPT])
    system = build("system", cfg.system_type, cfg.system, "system")
    frozen = system.frozen_state_keys()
    state = {k: v for k, v in system.state_dict().items() if k not in frozen}
    torch.save({"state_dict": state, "global_step": global_step, "epoch": 0}, path)
    return path


@pytest.fixture(scope="module")
def stage1_end(tmp_path_factory) -> Path:
    return write_stage1_checkpoint(tmp_path_factory.mktemp("s1") / "last.ckpt", 10000)


def stage2(*overrides: str):
    cfg, _ = load_config([str(SMOKE / "fourdfy_stage_2_tiny.yaml")], [PROMPT, FOURDFY_ANNEAL, *overrides])
    return build("system", cfg.system_type, cfg.system, "system")


def first_step_range(system) -> tuple[tuple[int, int], torch.Tensor]:
    """VSD's (min_step, max_step) once the first training batch has updated the parts, and 256 timesteps drawn
    there."""
    system.update_parts(0, 0)  # what on_train_batch_start does at stage 2's step 0
    g = system.guidance_single_view
    torch.manual_seed(0)
    t = g.sample_noise(torch.zeros(256, 4, 8, 8)).t
    return (g.min_step, g.max_step), t


def test_stage2_after_stage1_samples_t_in_20_500_from_its_first_step(stage1_end):
    system = stage2(f"system.weights={stage1_end}")
    (lo, hi), t = first_step_range(system)
    assert (lo, hi) == (20, 500)
    assert int(t.min()) >= 20 and int(t.max()) <= 500 and int(t.max()) > 450
    system.update_parts(0, 6000)
    system.update_parts(0, 1)  # one-way: never back to 0.98
    assert system.guidance_single_view.max_step == 500


def test_configured_schedule_behind_the_key(stage1_end):
    system = stage2(f"system.weights={stage1_end}", "system.guidance.max_step_latch=false")
    (lo, hi), t = first_step_range(system)
    assert (lo, hi) == (20, 980) and int(t.max()) > 500
    system.update_parts(0, 5001)
    assert system.guidance_single_view.max_step == 500  # annealed at its own step 5000
    system.update_parts(0, 0)
    assert system.guidance_single_view.max_step == 980


def test_an_early_checkpoint_or_no_weights_does_not_latch(tmp_path):
    early = write_stage1_checkpoint(tmp_path / "early.ckpt", 3000)  # before anneal_start_step
    assert first_step_range(stage2(f"system.weights={early}"))[0] == (20, 980)
    assert first_step_range(stage2())[0] == (20, 980)  # a stage 2 started from scratch


class RecordVSD(pl.Callback):
    """VSD's range and the timesteps it drew at every training step."""

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self._drawn: list[int] = []

    def on_train_start(self, trainer, pl_module) -> None:
        g = pl_module.guidance_single_view
        draw = g.sample_noise

        def recorded(latents, generator=None):
            out = draw(latents, generator)
            self._drawn += out.t.tolist()
            return out

        g.sample_noise = recorded

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        g = pl_module.guidance_single_view
        self.steps.append({"kind": batch.kind.value, "range": (g.min_step, g.max_step), "t": list(self._drawn)})
        self._drawn.clear()


def train(config: Path, *overrides: str) -> RecordVSD:
    args, extras = launch.parse_args(["--config", str(config), "--train", PROMPT, FOURDFY_ANNEAL, *overrides])
    record = RecordVSD()
    assert run_experiment(args, extras, (record,)) == 0
    return record


def test_first_training_step_of_a_chained_stage2_and_its_resume(stage1_end, tmp_path):
    common = [f"exp_root_dir={tmp_path}", "data.prob_multi_view=0.0", "data.single_view.n_test_views=1",
              "trainer.val_check_interval=100"]  # fmt: skip
    record = train(SMOKE / "fourdfy_stage_2_tiny.yaml", f"system.weights={stage1_end}", "trainer.max_steps=1", *common)
    (step0,) = record.steps
    assert step0["kind"] == "single_view" and step0["range"] == (20, 500)
    assert len(step0["t"]) == 1 and 20 <= step0["t"][0] <= 500

    (trial,) = (tmp_path / "fourdfy_stage_2_tiny").iterdir()
    ckpt = trial / "ckpts" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["fourdfy_weights_position"] == [0, 10000]
    # a resumed run does not load system.weights again; the checkpoint's stored position re-latches the anneal
    resumed = train(trial / "configs" / "parsed.yaml", f"resume={ckpt}", "trainer.max_steps=2", *common)
    assert [s["range"] for s in resumed.steps] == [(20, 500)]
