"""Lightning checkpoint I/O that writes atomically (temp file + fsync + rename).

A run killed while saving leaves the previous ``last.ckpt`` intact instead of a truncated file.
"""

from typing import Any, Optional

import torch
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO

from fourdfy.utils.io import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose ``save_checkpoint`` never leaves a partial file behind."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        atomic_write(path, lambda f: torch.save(checkpoint, f))
