"""The loggers of a training run: TensorBoard in ``{trial}/tb_logs`` and CSV in ``{trial}/csv_logs`` (4D-fy's
folders), with TensorBoard's flush throttled.

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
