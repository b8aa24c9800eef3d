"""``fourdfy.loggers``: TensorBoard's per-step flush is throttled, and nothing logged is lost at the end of a run."""

from pathlib import Path

import pytest

from fourdfy.loggers import ThrottledTensorBoardLogger, trial_loggers


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of every TensorBoard event file under ``log_dir``, read with the protobufs of whichever writer
    Lightning used (tensorboardX, or ``tensorboard`` behind ``torch.utils.tensorboard``)."""
    import struct

    try:
        from tensorboardX.proto import event_pb2
    except ModuleNotFoundError:
        from tensorboard.compat.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(log_dir.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        i = 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event.FromString(data[i + 12 : i + 12 + length])
            i += 12 + length + 4  # length, its crc, the record, its crc
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


class CountingFlushes(ThrottledTensorBoardLogger):
    flushes = 0

    def save(self) -> None:
        before = self._last_save
        super().save()
        if self._last_save != before:
            CountingFlushes.flushes += 1


def test_save_flushes_at_most_once_per_window_and_finalize_writes_everything(tmp_path):
    CountingFlushes.flushes = 0
    logger = CountingFlushes(str(tmp_path), name="tb_logs", flush_every_s=3600.0)
    for step in range(20):  # what Lightning does at log_every_n_steps=1: log_metrics then save, every step
        logger.log_metrics({"train/loss": float(step)}, step)
        logger.save()
    assert CountingFlushes.flushes == 1  # the first save flushes; the next 19 fall inside the window
    logger.finalize("success")
    assert _scalars(tmp_path / "tb_logs")["train/loss"] == [(s, float(s)) for s in range(20)]


def test_zero_window_flushes_every_save(tmp_path):
    CountingFlushes.flushes = 0
    logger = CountingFlushes(str(tmp_path), name="tb_logs", flush_every_s=0.0)
    for step in range(3):
        logger.log_metrics({"x": 1.0}, step)
        logger.save()
    assert CountingFlushes.flushes == 3
    logger.finalize("success")


def test_negative_window_is_refused(tmp_path):
    with pytest.raises(ValueError, match="flush_every_s"):
        ThrottledTensorBoardLogger(str(tmp_path), name="tb_logs", flush_every_s=-1.0)


def test_trial_loggers_keep_4dfy_folders(tmp_path):
    tb, csv = trial_loggers(tmp_path)
    assert isinstance(tb, ThrottledTensorBoardLogger)
    assert Path(tb.root_dir) == tmp_path / "tb_logs" and Path(csv.root_dir) == tmp_path / "csv_logs"


def test_learning_rate_keys_follow_lightnings_monitor():
    import torch

    from fourdfy.loggers import learning_rates

    w = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
    named = torch.optim.AdamW([{"params": [w[0]], "name": "geometry", "lr": 0.01}, {"params": [w[1]], "lr": 0.5}])
    assert learning_rates(named) == {"lr-AdamW/geometry": 0.01, "lr-AdamW/pg2": 0.5}
    assert learning_rates(torch.optim.SGD([w[2]], lr=0.1)) == {"lr-SGD": 0.1}
