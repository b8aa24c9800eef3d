"""``single-multiview-combined-camera-datamodule``: 4D-fy's data module.

Each training batch is a multi-view batch with probability ``prob_multi_view`` and a single-view batch otherwise
(a video clip with probability ``single_view.prob_single_view_video`` in dynamic stages). The batch carries its
:class:`~fourdfy.data.batch.BatchKind`, so the system never re-decides. Validation and test use the single-view
evaluation cameras.
"""

from collections.abc import Iterator
from typing import Optional

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from fourdfy.data.batch import CameraBatch
from fourdfy.data.config import CombinedCameraDataConfig
from fourdfy.data.camera_paths import EvalCameraDataset
from fourdfy.data.random_camera import RandomCameraSampler
from fourdfy.data.random_multiview import RandomMultiviewCameraSampler
from fourdfy.registry import register
from fourdfy.utils.base import Configurable


class TrainCameraStream(IterableDataset):
    """Endless stream of random training batches; the samplers' resolution follows ``update_step``."""

    def __init__(self, prob_multi_view: float, single: RandomCameraSampler, multi: RandomMultiviewCameraSampler):
        super().__init__()
        self.prob_multi_view = prob_multi_view
        self.single = single
        self.multi = multi

    def update_step(self, global_step: int) -> None:
        self.single.update_step(global_step)
        self.multi.update_step(global_step)

    def place_rays(self, device: Optional[torch.device]) -> None:
        """Build the batches' rays on ``device`` from now on (None: on the CPU)."""
        self.single.ray_device = self.multi.ray_device = device

    def sample(self) -> CameraBatch:
        """Toss the branch coin and draw one batch."""
        if self.prob_multi_view >= 1.0 or torch.rand(()).item() < self.prob_multi_view:
            return self.multi.sample()
        return self.single.sample()

    def __iter__(self) -> Iterator[CameraBatch]:
        while True:
            yield self.sample()


def _collate_one(items: list[CameraBatch]) -> CameraBatch:
    if len(items) != 1:
        raise ValueError("evaluation batches hold one view")
    return items[0]


@register("single-multiview-combined-camera-datamodule")
class SingleMultiviewCombinedCameraDataModule(pl.LightningDataModule, Configurable):
    """Random multi-view / single-view / video training cameras and fixed evaluation cameras."""

    kind = "datamodule"

    Config = CombinedCameraDataConfig

    def __init__(self, cfg, path: str = "data") -> None:
        super().__init__()
        self._set_cfg(cfg, path)
        self.train_stream = TrainCameraStream(
            self.cfg.prob_multi_view,
            RandomCameraSampler(self.cfg.single_view),
            RandomMultiviewCameraSampler(self.cfg.multi_view),
        )

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        """Resolution and batch-size schedules (called by the system before each training batch)."""
        self.train_stream.update_step(global_step)

    def train_dataloader(self) -> DataLoader:
        # rays_on_device: the device of this rank (known once a trainer holds the module); CPU rays otherwise
        trainer = getattr(self, "trainer", None)
        device = trainer.strategy.root_device if self.cfg.rays_on_device and trainer is not None else None
        self.train_stream.place_rays(device)
        # workers must stay 0: the samplers' resolution changes at run time (and the rays may be built on the GPU)
        return DataLoader(self.train_stream, batch_size=None, num_workers=0)

    def _eval_loader(self, split: str) -> DataLoader:
        return DataLoader(EvalCameraDataset(self.cfg.single_view, split), batch_size=1, collate_fn=_collate_one)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
