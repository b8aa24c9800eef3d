"""The Lightning system base: config, parts updated explicitly per step, optimizer groups, checkpoint hygiene and
stage chaining (``system.weights``)."""

import logging
from typing import Any, Optional

import pytorch_lightning as pl
import torch

from fourdfy.config import Scheduled
from fourdfy.schedule import scheduled_value
from fourdfy.systems.config import BaseSystemConfig
from fourdfy.systems.optim import build_optimizer
from fourdfy.systems.step_logs import StepValues, stage, values_of
from fourdfy.systems.weights import load_stage_weights
from fourdfy.utils.base import Configurable
from fourdfy.utils.transfer import to_device

logger = logging.getLogger(__name__)


class BaseSystem(pl.LightningModule, Configurable):
    """Shared machinery of every system. Subclasses build their parts in :meth:`configure`."""

    kind = "system"

    Config = BaseSystemConfig

    def __init__(self, cfg: Any, resumed: bool = False, path: str = "system") -> None:
        super().__init__()
        self._set_cfg(cfg, path)
        self.resumed = resumed
        self._true_global_step = 0
        self._true_current_epoch = 0
        self._status_from_checkpoint = False
        self._weights_position: Optional[tuple[int, int]] = None
        self._unlogged: Optional[StepValues] = None  # the previous step's values, not handed to the loggers yet
        self.configure()
        if self.cfg.weights is not None:
            if resumed:
                logger.info("resuming: system.weights is ignored, the resumed checkpoint has all weights")
            else:
                self.weights_report = load_stage_weights(self, self.cfg.weights, self.cfg.weights_ignore_modules)
                self.replay_weights_position(self.weights_report.source_epoch, self.weights_report.source_step)

    def replay_weights_position(self, epoch: int, global_step: int) -> None:
        """4D-fy's step after loading ``system.weights``: every part's ``update_step`` once with the loaded
        checkpoint's position and ``on_load_weights=True``. It only lasts in one-way state (VSD's max-step latch);
        the position is stored in this run's checkpoints so a resumed run replays it too."""
        self._weights_position = (int(epoch), int(global_step))
        for part in self.parts():
            if part is not None:
                part.update_step(int(epoch), int(global_step), on_load_weights=True)

    # -- parts ------------------------------------------------------------------------------------------------

    def configure(self) -> None:
        """Build the parts from ``self.cfg``."""

    def parts(self) -> list[Any]:
        """Parts with step-dependent state, in the order their ``update_step`` is called."""
        return []

    def update_parts(self, epoch: int, global_step: int) -> None:
        """Call ``update_step`` once on each part, in :meth:`parts` order (no attribute walking)."""
        for part in self.parts():
            if part is not None:
                part.update_step(epoch, global_step)

    @property
    def true_global_step(self) -> int:
        """The training step (in eval-only runs: the step of the loaded checkpoint, see :meth:`set_status`)."""
        if self._trainer is None or self._status_from_checkpoint:
            return self._true_global_step
        return self.trainer.global_step

    @property
    def true_current_epoch(self) -> int:
        if self._trainer is None or self._status_from_checkpoint:
            return self._true_current_epoch
        return self.trainer.current_epoch

    def set_status(self, epoch: int, global_step: int) -> None:
        """Record the checkpoint's position for eval-only runs (file names use the step)."""
        self._true_current_epoch = epoch
        self._true_global_step = global_step
        self._status_from_checkpoint = True

    def scheduled(self, value: Scheduled) -> float:
        """A scheduled value (a constant or ``[start_step, start, end, end_step]``) at the current position."""
        return scheduled_value(value, self.true_current_epoch, self.true_global_step)

    # -- Lightning hooks ----------------------------------------------------------------------------------------

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        dm = self.trainer.datamodule
        if dm is not None and hasattr(dm, "update_step"):
            dm.update_step(self.current_epoch, self.global_step)
        self.update_parts(self.current_epoch, self.global_step)

    def on_train_end(self) -> None:
        self._write_staged()

    # -- logging ------------------------------------------------------------------------------------------------

    def log_step(
        self, tensors: dict[str, torch.Tensor], numbers: dict[str, float], batch_size: int,
        prog_bar: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        """Log a training step's scalar tensors and Python numbers. With ``system.defer_step_reads`` they are
        staged and written during the next step (``fourdfy/systems/step_logs.py``), and this step writes the
        previous one's; otherwise ``self.log`` each now (the numbers in one copy, :meth:`log_numbers`)."""
        if not self.cfg.defer_step_reads or self._trainer is None:
            for name, value in tensors.items():
                self.log(name, value, prog_bar=name in prog_bar, batch_size=batch_size)
            self.log_numbers(numbers, batch_size=batch_size)
            return
        loop = getattr(self.trainer, "fit_loop", None)
        step = getattr(getattr(loop, "epoch_loop", None), "_batches_that_stepped", self.global_step)
        staged = stage(
            tensors, numbers, self.device, prog_bar, step=int(step), epoch=self.current_epoch,
            batch_size=batch_size, write=self.logs_written_this_step(),
        )  # fmt: skip
        self._write_staged(log=True)  # the previous step's values: its copy completed long ago
        self._unlogged = staged

    def _write_staged(self, log: bool = False) -> None:
        """Hand the staged values to Lightning (``log``: progress bar and callback metrics; only inside a
        training step) and, if their step is one Lightning writes, to every logger at their step."""
        staged, self._unlogged = self._unlogged, None
        if staged is None:
            return
        values = values_of(staged)
        if log:
            for (name, value), bar in zip(values.items(), staged.prog_bar):
                self.log(name, value, logger=False, prog_bar=bar, batch_size=staged.batch_size)
        if staged.write and values and self._trainer is not None:
            scalars = {name: float(v) for name, v in values.items()} | {"epoch": staged.epoch}
            for lg in self.loggers:
                lg.log_metrics(scalars, step=staged.step)
                lg.save()

    def log_numbers(self, numbers: dict[str, float], batch_size: int) -> None:
        """``self.log`` each Python number, all sent to the device in one copy. Lightning turns every number it
        is given into a device tensor, a host-to-device copy from pageable memory that synchronises the host with
        the GPU: some 15 per iteration here. One copy from pinned memory, issued without blocking, makes none."""
        if not numbers:
            return
        values = to_device(torch.tensor(list(numbers.values()), dtype=torch.float32), self.device)
        for name, value in zip(numbers, values.unbind()):
            self.log(name, value, batch_size=batch_size)

    def logs_written_this_step(self) -> bool:
        """Whether Lightning writes this training step's logged values to the loggers (every
        ``trainer.log_every_n_steps``); true when that cannot be told (no trainer, another Lightning). Each
        ``self.log`` call costs a few hundred microseconds of host time, so values the loggers would not write are
        not logged."""
        connector = getattr(self._trainer, "_logger_connector", None) if self._trainer is not None else None
        return bool(getattr(connector, "should_update_logs", True))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return build_optimizer(self, self.cfg.optimizer)

    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.cfg.cleanup_after_validation_step and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.cfg.cleanup_after_test_step and torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- checkpoints: frozen pretrained weights are never saved ------------------------------------------------

    def frozen_state_keys(self) -> set[str]:
        """State-dict keys of frozen pretrained networks (declared by the guidances)."""
        return set()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        frozen = self.frozen_state_keys()
        state = checkpoint["state_dict"]
        for k in [k for k in state if k in frozen]:
            del state[k]
        checkpoint["fourdfy_frozen_keys_dropped"] = len(frozen)
        if self._weights_position is not None:
            checkpoint["fourdfy_weights_position"] = list(self._weights_position)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        position = checkpoint.get("fourdfy_weights_position")
        if position is not None:
            # a resumed training run replays the position its system.weights had (for VSD's max-step latch);
            # eval-only runs keep it for their own checkpoints but replay nothing
            self._weights_position = (int(position[0]), int(position[1]))
            if self._trainer is not None and self.trainer.state.fn == "fit":
                self.replay_weights_position(*self._weights_position)
        # put the live frozen weights back so Lightning's strict load checks every *other* key
        state = checkpoint["state_dict"]
        live = self.state_dict()
        for k in self.frozen_state_keys():
            if k not in state:
                state[k] = live[k]
