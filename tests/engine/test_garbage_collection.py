"""``fourdfy.garbage_collection``: the objects alive when training starts leave the collector's reach for the fit
and come back after it; ``freeze_gc: false`` turns it off."""

import gc
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from fourdfy.experiment import load_config
from fourdfy.garbage_collection import FreezeSetupObjects

TINY1 = str(Path(__file__).resolve().parents[2] / "configs" / "smoke" / "fourdfy_stage_1_tiny.yaml")
PROMPT = "system.prompt_processor.prompt=a panda dancing"


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))
        self.frozen_during_steps: list[int] = []

    def training_step(self, batch, batch_idx):
        self.frozen_during_steps.append(gc.get_freeze_count())
        return (self.w * batch).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(4, 3), batch_size=2)


def fit(callback: pl.Callback, module: pl.LightningModule) -> None:
    trainer = pl.Trainer(max_steps=2, callbacks=[callback], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")  # fmt: skip
    trainer.fit(module)


def test_setup_objects_are_frozen_during_the_fit_only():
    before = gc.get_freeze_count()  # 0 in a fresh process; a library may have frozen a few objects already
    module, callback = Tiny(), FreezeSetupObjects()
    fit(callback, module)
    # the module and everything alive at on_train_start sat in the permanent generation during every step
    assert len(module.frozen_during_steps) == 2 and min(module.frozen_during_steps) > before + 1000
    assert gc.get_freeze_count() == 0 and callback.frozen == 0  # given back at the end


def test_objects_frozen_before_the_fit_are_given_back_too():
    # one permanent generation: what other code froze before training is unfrozen with the rest at the end
    gc.freeze()
    try:
        assert gc.get_freeze_count() > 0
        fit(FreezeSetupObjects(), Tiny())
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()


def test_a_failing_fit_unfreezes_too():
    class Failing(Tiny):
        def training_step(self, batch, batch_idx):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fit(FreezeSetupObjects(), Failing())
    assert gc.get_freeze_count() == 0


def test_freeze_gc_is_a_top_level_key_on_by_default():
    on, _ = load_config([TINY1], [PROMPT])
    off, _ = load_config([TINY1], [PROMPT, "freeze_gc=false"])
    assert on.freeze_gc is True and off.freeze_gc is False
