"""The loggers of a training run: TensorBoard in ``{trial}/tb_logs`` and CSV in ``{trial}/csv_logs`` (4D-fy's
folders), with TensorBoard's flush throttled, and the learning-rate monitor (:class:`StepLearningRates`).

Lightning calls ``logger.save()`` after every ``log_metrics`` call, that is every ``trainer.log_every_n_steps``
steps (4D-fy's configs set 1). For TensorBoard ``save`` flushes the event file with an ``fsync`` and looks for its
``hparams.yaml`` on disk: on a GPU that runs a step in a tenth of a second that is a disk round trip per step in
the host's critical path. :class:`ThrottledTensorBoardLogger` flushes at most every ``flush_every_s`` seconds (the
events are queued in memory in between, as TensorBoard's writer does anyway) and always when the run ends, so
nothing logged is lost by a run that finishes, fails or is interrupted (Lightning finalizes the loggers then).
"""

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger


class ThrottledTensorBoardLogger(TensorBoardLogger):
    """Lightning's TensorBoard logger whose per-step ``save`` (flush + ``fsync``) runs at most every
    ``flush_every_s`` seconds; ``finalize`` always flushes.

    Args:
        flush_every_s: least seconds between two flushes of the event file (0 flushes at every ``save``).
        *args, **kwargs: those of :class:`pytorch_lightning.loggers.TensorBoardLogger`.
    """

    def __init__(self, *args: Any, flush_every_s: float = 10.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if flush_every_s < 0:
            raise ValueError(f"flush_every_s must be >= 0 seconds, got {flush_every_s}")
        self.flush_every_s = flush_every_s
        self._last_save = float("-inf")

    def save(self) -> None:
        now = time.monotonic()
        if now - self._last_save < self.flush_every_s:
            return
        self._last_save = now
        super().save()

    def finalize(self, status: str) -> None:
        self._last_save = float("-inf")  # the end of a run always writes what is queued
        super().finalize(status)


def trial_loggers(trial: Path) -> list[Any]:
    """The loggers every training run writes: TensorBoard in ``{trial}/tb_logs`` and CSV in ``{trial}/csv_logs``
    (``benchmarks/iteration.py`` uses them too, so that it measures their cost)."""
    return [ThrottledTensorBoardLogger(str(trial), name="tb_logs"), CSVLogger(str(trial), name="csv_logs")]


def learning_rates(optimizer: Any) -> dict[str, float]:
    """Each parameter group's learning rate under the key Lightning's ``LearningRateMonitor`` gives it for a run with
    one optimizer and no scheduler: ``lr-<class>``, then ``/<group name>`` (a named group) or ``/pg<i>`` (an unnamed
    one among several).

    Example: AdamW with groups named ``geometry`` and ``background`` gives ``{"lr-AdamW/geometry": ...,
    "lr-AdamW/background": ...}``."""
    prefix = f"lr-{type(optimizer).__name__}"
    groups = optimizer.param_groups
    out = {}
    for i, group in enumerate(groups):
        name = group.get("name") or (f"pg{i + 1}" if len(groups) > 1 else None)
        out[f"{prefix}/{name}" if name else prefix] = float(group["lr"])
    return out


class StepLearningRates(pl.Callback):
    """The learning rate of every optimizer group, written to the loggers at every step they write: Lightning's
    ``LearningRateMonitor("step")`` (4D-fy's), same keys and steps. Lightning's monitor also stores each value in
    ``trainer.callback_metrics`` as a tensor on the training device, a copy from pageable host memory per group at
    the start of every step, which makes the host wait there for the previous step's GPU work. When the module's
    ``cfg.defer_step_reads`` holds (and there is one optimizer without a scheduler), the values go there as CPU
    tensors; otherwise Lightning's monitor runs."""

    def __init__(self) -> None:
        from pytorch_lightning.callbacks import LearningRateMonitor

        self.lightning = LearningRateMonitor("step")

    def _on_host(self, trainer: Any, pl_module: Any) -> bool:
        defer = bool(getattr(getattr(pl_module, "cfg", None), "defer_step_reads", False))
        return defer and len(trainer.optimizers) == 1 and not trainer.lr_scheduler_configs

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.lightning.on_train_start(trainer, pl_module)  # its checks (a logger is needed) and bookkeeping

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if not self._on_host(trainer, pl_module):
            self.lightning.on_train_batch_start(trainer, pl_module, batch, batch_idx)
            return
        if not trainer._logger_connector.should_update_logs:
            return
        rates = learning_rates(trainer.optimizers[0])
        trainer.callback_metrics.update({name: torch.tensor(value) for name, value in rates.items()})
        for lg in trainer.loggers:
            lg.log_metrics(rates, step=trainer.fit_loop.epoch_loop._batches_that_stepped)
