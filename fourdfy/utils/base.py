"""Base classes: every configurable part has a nested ``Config`` dataclass and a registry ``kind``.

Step-dependent behaviour is explicit: a part that changes with training overrides :meth:`update_step`, and the
system calls it once per training batch, for each part, in a fixed order (see
``fourdfy.systems.base.BaseSystem.update_parts``). Nothing walks attributes.
"""

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from fourdfy.config import parse_config


class Configurable:
    """Mixin: ``self.cfg`` is the parsed ``Config`` instance (a dict is parsed strictly on construction)."""

    kind: ClassVar[str] = ""
    registry_name: ClassVar[str] = ""

    @dataclasses.dataclass
    class Config:
        pass

    def _set_cfg(self, cfg: Any, path: str) -> None:
        self.cfg = parse_config(self.Config, cfg, path or type(self).__name__)

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        """Called before every training batch (and once after loading weights). Default: nothing."""


class BaseObject(Configurable):
    """A configurable part that holds no trainable state (prompt processors, frozen video guidances)."""

    def __init__(self, cfg: Any = None, path: str = "") -> None:
        self._set_cfg(cfg, path)
        self.configure()

    def configure(self) -> None:
        """Build the object's state from ``self.cfg``."""


class BaseModule(nn.Module, Configurable):
    """A configurable ``nn.Module`` part (geometry, renderer, background, trainable guidance parts)."""

    def __init__(self, cfg: Any = None, path: str = "") -> None:
        nn.Module.__init__(self)
        self._set_cfg(cfg, path)
        self.configure()

    def configure(self) -> None:
        """Build submodules from ``self.cfg``."""

    @property
    def device(self) -> torch.device:
        """The device of the first parameter or buffer (CPU when the module has none)."""
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")
