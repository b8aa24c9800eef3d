"""Reading device values on the host one step late, so that the host never waits for the GPU between steps.

A training step ends with values the host must see: the logged losses, the divergence guard's flags. Reading a
CUDA tensor (``.item()``, ``.tolist()``) makes the host wait until the GPU has run everything queued before it,
i.e. the whole step, and only then may the host start preparing the next step (draw the cameras, run Lightning's
hooks, launch the first kernels) while the GPU sits idle. :class:`HostCopy` queues the copy to pinned host memory
behind the step's kernels and records an event; a step later, when the next step's own synchronisations (ray
marching's sample counts) have long drained the queue past it, :meth:`HostCopy.wait` returns at once.

Example::

    copy = HostCopy.start(torch.stack([loss, grad_norm]))   # at the end of step N: nothing waits
    ...                                                      # step N + 1 runs
    loss_n, grad_norm_n = copy.wait().tolist()               # step N's values, without a stall
"""

import dataclasses
from typing import Optional

import torch
from torch import Tensor


@dataclasses.dataclass
class HostCopy:
    """A tensor's values on their way to host memory: ``host`` holds them once ``event`` (``None`` for a tensor
    that was already on the host) has completed."""

    host: Tensor
    event: Optional[torch.cuda.Event] = None

    @classmethod
    def start(cls, x: Tensor) -> "HostCopy":
        """Queue the copy of ``x`` to host memory behind the kernels that compute it; no host synchronisation. A
        CPU tensor is taken as it is (detached)."""
        x = x.detach()
        if x.device.type != "cuda":
            return cls(x)
        host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
        host.copy_(x, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return cls(host, event)

    def ready(self) -> bool:
        """Whether :meth:`wait` would return without waiting."""
        return self.event is None or self.event.query()

    def wait(self) -> Tensor:
        """The values on the host, waiting for the copy if it has not completed (only for the work queued up to
        :meth:`start`, not for anything queued since)."""
        if self.event is not None:
            self.event.synchronize()
        return self.host
