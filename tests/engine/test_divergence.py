"""Issue 14 item 3: a diverging run stops with the step and the likely cause, and keeps the last good checkpoint."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import launch
from fourdfy.errors import DivergenceError
from fourdfy.guards import DivergenceGuard, finite_flags

ROOT = Path(__file__).resolve().parents[2]
TINY1 = str(ROOT / "configs" / "smoke" / "fourdfy_stage_1_tiny.yaml")
PROMPT = "system.prompt_processor.prompt=a panda dancing"


def test_learning_rate_blow_up_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, capfd):
    """4D-fy's case: lr=1e6 on the hash grid and both MLPs ran to the end, exit 0, inf weights, a NaN grid."""
    rc = launch.main([
        "--config", TINY1, "--train", PROMPT, f"exp_root_dir={tmp_path}", "data.single_view.n_test_views=1",
        "trainer.enable_progress_bar=false", "checkpoint.every_n_train_steps=2",
        "system.optimizer.params[geometry.encoding].lr=1e6", "system.optimizer.params[geometry.density_network].lr=1e6",
        "system.optimizer.params[geometry.feature_network].lr=1e6",
    ])  # fmt: skip
    err = capfd.readouterr().err
    assert rc == 2
    (line,) = [x for x in err.splitlines() if x.startswith("fourdfy: error:")]
    # the first symptom may be an inf parameter (CPU) or a NaN loss (the GPU's fp16 guidance): both name the cause
    assert "training diverged at step" in line and "Likely cause:" in line and "learning rate" in line
    assert "The last good checkpoint is kept" in line
    (trial,) = (tmp_path / "fourdfy_stage_1_tiny").iterdir()
    assert [p.name for p in (trial / "ckpts").iterdir()] == ["last.ckpt"]
    ckpt = torch.load(trial / "ckpts" / "last.ckpt", map_location="cpu", weights_only=True)
    assert 0 < ckpt["global_step"] < 20 and f"(step {ckpt['global_step']})" in line
    for key, value in ckpt["state_dict"].items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), key
    assert ckpt["state_dict"]["renderer.estimator.binaries"].any()
    assert not list((trial / "save").glob("*-test*"))  # no test videos of a diverged field


class Grid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("occs", torch.zeros(8))
        self.register_buffer("binaries", torch.zeros(1, 2, 2, 2, dtype=torch.bool))


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.geometry = nn.Linear(2, 2)
        self.renderer = nn.Module()
        self.renderer.estimator = Grid()


def fake_trainer(step: int, model: nn.Module, precision: str = "32-true", world_size: int = 1) -> SimpleNamespace:
    opt = torch.optim.SGD([{"params": model.geometry.parameters(), "name": "geometry", "lr": 5.0}])
    return SimpleNamespace(global_step=step, world_size=world_size, precision=precision, optimizers=[opt],
                           callback_metrics={"train/loss_sds": torch.tensor(float("nan"))})  # fmt: skip


def test_non_finite_loss_and_gradient(tmp_path):
    """The loss and gradient checks run on the device during the step; the step's end reads them and stops."""
    model = Toy()
    guard = DivergenceGuard(tmp_path)
    guard.on_train_batch_start(fake_trainer(3, model), model, None, 0)
    guard.on_before_backward(fake_trainer(3, model), model, torch.tensor(float("nan")))  # no host read here
    with pytest.raises(DivergenceError, match=r"step 3: the loss is nan \(loss_sds=nan\)"):
        guard.on_train_batch_end(fake_trainer(4, model), model, None, None, 0)
    guard.on_train_batch_start(fake_trainer(3, model), model, None, 0)
    guard.on_before_backward(fake_trainer(3, model, world_size=2), model, torch.tensor(float("nan")))  # DDP: below
    guard.on_train_batch_end(fake_trainer(4, model), model, None, None, 0)
    # a step that never reached its end leaves nothing behind for the next one
    guard.on_before_backward(fake_trainer(5, model), model, torch.tensor(float("inf")))
    guard.on_train_batch_start(fake_trainer(6, model), model, None, 0)
    guard.on_train_batch_end(fake_trainer(7, model), model, None, None, 0)
    model.geometry.weight.grad = torch.full((2, 2), float("inf"))
    t = fake_trainer(4, model)
    guard.on_before_optimizer_step(t, model, t.optimizers[0])
    with pytest.raises(DivergenceError, match=r"step 4: the gradient of geometry.weight is not finite.*'geometry'"):
        guard.on_train_batch_end(fake_trainer(5, model), model, None, None, 0)
    guard.on_train_batch_start(t, model, None, 0)
    guard.on_before_optimizer_step(fake_trainer(4, model, "16-mixed"), model, t.optimizers[0])  # the scaler's job
    guard.on_train_batch_end(fake_trainer(5, model), model, None, None, 0)
    guard.on_before_optimizer_step(fake_trainer(4, model, "bf16-mixed"), model, t.optimizers[0])
    with pytest.raises(DivergenceError, match="No checkpoint had been saved yet"):
        guard.on_train_batch_end(fake_trainer(5, model), model, None, None, 0)


def test_finite_flags_per_tensor_across_dtypes():
    named = [("a", torch.tensor([1.0, float("nan")])), ("h", torch.tensor([65504.0], dtype=torch.float16)),
             ("b", torch.tensor([2.0, 3.0e38])), ("c", torch.tensor([float("-inf")])), ("e", torch.zeros(0))]  # fmt: skip
    names, flags = finite_flags(named)
    assert sorted(names) == ["a", "b", "c", "e", "h"] and flags.dtype == torch.bool
    # finite values near the dtype's largest (whose squares overflow) are finite; an empty tensor is finite
    assert dict(zip(names, flags.tolist())) == {"a": False, "h": True, "b": True, "c": False, "e": True}
    assert finite_flags([])[0] == [] and finite_flags([])[1].numel() == 0


def test_non_finite_parameter_and_emptied_occupancy_grid():
    model = Toy()
    guard = DivergenceGuard()
    grid = model.renderer.estimator
    guard.on_train_batch_end(fake_trainer(1, model), model, None, None, 0)  # an empty grid before its first update
    grid.binaries[0, 0, 0, 0] = True
    guard.on_train_batch_end(fake_trainer(2, model), model, None, None, 0)
    grid.binaries.zero_()
    with pytest.raises(DivergenceError, match=r"step 2: the occupancy grid renderer.estimator emptied"):
        guard.on_train_batch_end(fake_trainer(3, model), model, None, None, 0)
    grid.occs[0] = float("nan")
    with pytest.raises(DivergenceError, match="holds NaN/inf densities"):
        guard.on_train_batch_end(fake_trainer(3, model), model, None, None, 0)
    grid.occs[0] = 0.0
    grid.binaries[0, 0, 0, 0] = True
    # a frozen tensor in an optimizer group (4D-fy's VSD group holds the frozen UNets) is not the optimizer's to
    # change, and is not checked: the guard reads only parameters that require a gradient
    model.geometry.weight.requires_grad_(False)
    with torch.no_grad():
        model.geometry.weight[0, 0] = float("nan")
    guard.on_train_batch_end(fake_trainer(4, model), model, None, None, 0)
    with torch.no_grad():
        model.geometry.bias[0] = float("inf")
    with pytest.raises(DivergenceError, match=r"step 4: parameter geometry.bias became inf or NaN.*lr=5"):
        guard.on_train_batch_end(fake_trainer(5, model), model, None, None, 0)


def test_deferred_flags_are_judged_a_step_later_and_before_anything_is_saved(tmp_path):
    """``defer``: a step's flags are read at the end of the next step (naming the bad step), or at once before a
    checkpoint is written, at validation and at the end of training."""
    model = Toy()
    guard = DivergenceGuard(tmp_path, defer=True)

    def bad_step(step: int) -> None:
        guard.on_train_batch_start(fake_trainer(step, model), model, None, 0)
        guard.on_before_backward(fake_trainer(step, model), model, torch.tensor(float("nan")))
        guard.on_train_batch_end(fake_trainer(step + 1, model), model, None, None, 0)  # no read yet: no raise

    bad_step(3)
    guard.on_train_batch_start(fake_trainer(4, model), model, None, 0)
    with pytest.raises(DivergenceError, match=r"step 3: the loss is nan"):
        guard.on_train_batch_end(fake_trainer(5, model), model, None, None, 0)
    for settle in (
        lambda t: guard.on_save_checkpoint(t, model, {}),
        lambda t: guard.on_validation_start(t, model),
        lambda t: guard.on_train_end(t, model),
    ):  # fmt: skip
        bad_step(7)
        with pytest.raises(DivergenceError, match=r"step 7: the loss is nan"):
            settle(fake_trainer(8, model))
        guard.on_train_end(fake_trainer(8, model), model)  # read once: nothing left
    # another error in the step after a bad one carries a note naming the divergence
    bad_step(9)
    error = RuntimeError("cuda kernel failed")
    guard.on_exception(fake_trainer(10, model), model, error)
    assert any("step 9: the loss is nan" in note for note in error.__notes__)
    # the module's config decides when the guard is not told
    for flag in (True, False):
        model.cfg = SimpleNamespace(defer_step_reads=flag)
        auto = DivergenceGuard()
        auto.on_before_backward(fake_trainer(2, model), model, torch.tensor(float("inf")))
        if flag:
            auto.on_train_batch_end(fake_trainer(3, model), model, None, None, 0)
            assert auto._unread is not None
        else:
            with pytest.raises(DivergenceError, match="step 2"):
                auto.on_train_batch_end(fake_trainer(3, model), model, None, None, 0)
