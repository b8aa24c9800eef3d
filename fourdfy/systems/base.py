"""The Lightning system base: config, parts updated explicitly per step, optimizer groups, checkpoint hygiene and
stage chaining (``system.weights``)."""

import logging
from typing import Any

import pytorch_lightning as pl
import torch

from fourdfy.config import Scheduled
from fourdfy.schedule import scheduled_value
from fourdfy.systems.config import BaseSystemConfig
from fourdfy.systems.optim import build_optimizer
from fourdfy.systems.weights import load_stage_weights
from fourdfy.utils.base import Configurable

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
