"""Stage 3 on the tiny stand-ins: the branch table, how often each branch is drawn, which branch trains the 4-D
part of the field, and that data and system keys held twice must agree."""

from pathlib import Path

from types import SimpleNamespace

import pytest
import torch

from fourdfy.data.batch import BatchKind
from fourdfy.experiment import load_config
from fourdfy.registry import build
from fourdfy.systems.branches import branch_probabilities, check_agreement

ROOT = Path(__file__).resolve().parents[2]
TINY3 = str(ROOT / "configs" / "smoke" / "fourdfy_stage_3_tiny.yaml")
PROMPT = "system.prompt_processor.prompt=a panda dancing"


def test_branch_probabilities_of_the_stage_3_configs():
    assert branch_probabilities(0.5, False, True, 0.5) == {
        BatchKind.MULTI_VIEW: 0.5, BatchKind.SINGLE_VIEW: 0.25, BatchKind.VIDEO: 0.25}
    low_vram = branch_probabilities(0.75, False, True, 1.0)
    assert low_vram[BatchKind.SINGLE_VIEW] == 0.0 and low_vram[BatchKind.VIDEO] == 0.25
    # static stages never draw clips, whatever the video keys say
    assert branch_probabilities(0.5, True, True, 0.5)[BatchKind.VIDEO] == 0.0


@pytest.mark.parametrize("overrides, expected", [
    ([], {BatchKind.MULTI_VIEW: 0.5, BatchKind.SINGLE_VIEW: 0.25, BatchKind.VIDEO: 0.25}),
    (["data.prob_multi_view=0.75", "data.single_view.prob_single_view_video=1.0"],
     {BatchKind.MULTI_VIEW: 0.75, BatchKind.SINGLE_VIEW: 0.0, BatchKind.VIDEO: 0.25}),
])  # fmt: skip
def test_the_data_module_draws_branches_at_the_configured_rates(overrides, expected):
    exp, _ = load_config([TINY3], [PROMPT, *overrides])
    dm = build("datamodule", exp.data_type, exp.data, "data")
    torch.manual_seed(0)
    n = 2000
    counts = {k: 0 for k in expected}
    for _ in range(n):
        counts[dm.train_stream.sample().kind] += 1
    for kind, p in expected.items():
        sigma = (p * (1 - p) / n) ** 0.5
        assert abs(counts[kind] / n - p) <= 4 * sigma + 1e-9, (kind, counts)


def test_keys_held_twice_must_agree():
    assert check_agreement({"prob_multi_view": 0.5}, {"prob_multi_view": 0.5}) == []
    errors = check_agreement(
        {"prob_multi_view": 0.5, "simultan": True, "geometry": {"pos_encoding_config": {"static": True}}},
        {"prob_multi_view": 0.7, "single_view": {"simultan": False, "static": False}},
    )
    assert len(errors) == 3
    assert "system.prob_multi_view (0.5) and data.prob_multi_view (0.7) must agree" in errors[0]
    assert "data.single_view.static" in errors[2]


@pytest.fixture(scope="module")
def system_and_data():
    exp, _ = load_config([TINY3], [PROMPT])
    system = build("system", exp.system_type, exp.system, "system")
    dm = build("datamodule", exp.data_type, exp.data, "data")
    return system, dm


def batch_of(dm, kind: BatchKind):
    torch.manual_seed(1)
    while True:
        b = dm.train_stream.sample()
        if b.kind == kind:
            return b


def temporal_grads(system, batch):
    system.train()
    system.renderer.update_step(0, 0)
    system.zero_grad(set_to_none=True)
    system.training_step(batch, 0).backward()
    temporal = list(system.geometry.temporal_parameters())
    static = system.geometry.encoding.encoding.encoding.params
    return [p.grad for p in temporal], static.grad


def test_video_steps_train_the_temporal_grid_and_image_steps_do_not(system_and_data):
    system, dm = system_and_data
    assert set(system.branches) == {BatchKind.MULTI_VIEW, BatchKind.SINGLE_VIEW, BatchKind.VIDEO}
    assert system.branches[BatchKind.VIDEO].trains_temporal
    video = batch_of(dm, BatchKind.VIDEO)
    assert video.times.shape == (1, 4)
    grads, static_grad = temporal_grads(system, video)
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert static_grad is not None and float(static_grad.abs().sum()) > 0  # the static grid learns too
    for kind in (BatchKind.MULTI_VIEW, BatchKind.SINGLE_VIEW):
        assert not system.branches[kind].trains_temporal
        grads, static_grad = temporal_grads(system, batch_of(dm, kind))
        assert all(g is None for g in grads), kind  # no gradient: AdamW leaves them (and their moments) alone
        assert static_grad is not None and float(static_grad.abs().sum()) > 0


def test_freeze_static_modules_trains_the_temporal_part_on_every_branch():
    """4D-fy's rule: with ``freeze_static_modules`` every parameter is frozen at the start of fitting and each branch
    re-enables only the 4-D part."""
    exp, _ = load_config([TINY3], [PROMPT, "system.freeze_static_modules=true"])
    system = build("system", exp.system_type, exp.system, "system")
    assert all(b.trains_temporal for b in system.branches.values())
    system.on_fit_start()
    assert not any(p.requires_grad for p in system.parameters())
    system.set_temporal_training(system.branches[BatchKind.MULTI_VIEW])
    temporal = {id(p) for p in system.geometry.temporal_parameters()}
    assert temporal and all(p.requires_grad == (id(p) in temporal) for p in system.parameters())


@pytest.mark.parametrize("defer", [False, True])
def test_loss_weights_are_logged_only_on_steps_the_loggers_write(system_and_data, monkeypatch, defer):
    """``self.log`` costs host time per call: the loss weights (``train_params/*``) are logged only where Lightning
    writes to the loggers; the losses, statistics and sample count on every step. Deferred
    (``system.defer_step_reads``), a step stages them and marks whether its step is written."""
    system, dm = system_and_data
    system.train()
    system.renderer.update_step(0, 0)
    monkeypatch.setattr(system.cfg, "defer_step_reads", defer)
    batch = batch_of(dm, BatchKind.MULTI_VIEW)
    for writes in (False, True):
        logged: list[str] = []
        monkeypatch.setattr(system, "log", lambda name, value, **kw: logged.append(name))
        connector = SimpleNamespace(should_update_logs=writes)
        monkeypatch.setattr(system, "_trainer", SimpleNamespace(_logger_connector=connector, global_step=0, current_epoch=0))
        system._unlogged = None
        system.training_step(batch, 0)
        if defer:
            assert logged == [] and system._unlogged.write == writes  # nothing before this step to hand over
            logged = system._unlogged.names
        params = [n for n in logged if n.startswith("train_params/")]
        assert len(params) == (8 if writes else 0)
        assert {"train/loss", "train/num_samples", "train/loss_sds"} <= set(logged)


def test_lightning_still_tells_whether_a_step_writes_logs():
    """``logs_written_this_step`` reads Lightning's logger connector; were it gone, every step would log again
    (correct, slower): this test notices."""
    import pytorch_lightning as pl

    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=5)
    assert isinstance(trainer._logger_connector.should_update_logs, bool)
