"""Python's cyclic garbage collector and a training loop that holds four diffusion networks.

A stage-3 training process holds some 550,000 Python objects that the collector tracks (about 190,000 from the
imports, the rest from building the system; the tiny smoke system has nearly as many, so few of them are the
networks' tensors): one full collection walks them all, about 200 ms on a CI core (``python
benchmarks/gc_objects.py``; ``benchmarks/iteration.py`` reports the collections' time per iteration). Those objects
live as long as the run, so walking them finds nothing.
:class:`FreezeSetupObjects` collects once when training starts and moves every object alive then to the permanent
generation (:func:`gc.freeze`): later collections walk only what the training loop itself creates. Nothing is
changed numerically. The price: a setup object that becomes unreachable later, inside a reference cycle, stays in
memory until the run ends (objects without cycles are still freed at once by reference counting).

``freeze_gc: false`` (top-level config key) leaves the collector as Python sets it.
"""

import gc
from typing import Any

import pytorch_lightning as pl


class FreezeSetupObjects(pl.Callback):
    """At ``on_train_start``: one full collection, then :func:`gc.freeze`; at the end of training (or when it
    fails), :func:`gc.unfreeze`, so that evaluation or a next stage in the same process starts from Python's
    state. Python has one permanent generation: objects that other code froze before training (a library preparing
    a fork; 375 of them in one test worker on the GPU machine) are given back to the collector too, which only
    means it walks them again."""

    def __init__(self) -> None:
        self.frozen = 0
        """Objects moved to the permanent generation by the last freeze (0 while not frozen)."""

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        gc.collect()
        gc.freeze()
        self.frozen = gc.get_freeze_count()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._unfreeze()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._unfreeze()

    def _unfreeze(self) -> None:
        if self.frozen:
            gc.unfreeze()
            self.frozen = 0
