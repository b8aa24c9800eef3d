"""A training step's logged values, written one step late so that the host never waits for the GPU between steps
(``system.defer_step_reads``, the default).

Lightning turns every logged CUDA tensor into a Python number at the end of its step (for the progress bar every
step, for the loggers every ``trainer.log_every_n_steps``): the first conversion waits for the GPU to finish the
whole step (its backward pass and optimizer step), and only then does the host start the next step. Instead, a step
stages its values (:func:`stage`: one device vector, copied to pinned host memory behind the step's kernels), and
the next step hands them to Lightning and the loggers when the copy has long completed (:func:`values_of`):

1. ``self.log(name, value, logger=False)`` with the values as CPU tensors: the progress bar and
   ``trainer.callback_metrics`` (the divergence guard's message reads them) show the previous step's values;
2. each logger gets ``log_metrics(values | {"epoch": epoch}, step=<the step that computed them>)`` and ``save()``,
   as Lightning would have written them at that step, if that step was one Lightning writes
   (``trainer.log_every_n_steps``): the curves are the same, step for step.

The last step's values are written at the end of training (``on_train_end``); a run that dies loses its last
step's row.
"""

import dataclasses

import torch
from torch import Tensor

from fourdfy.utils.host_copy import HostCopy
from fourdfy.utils.transfer import to_device


@dataclasses.dataclass
class StepValues:
    """One step's logged values on their way to the host, and where they go."""

    step: int
    """Lightning's logging step of the step that computed them (``_batches_that_stepped``)."""
    epoch: int
    names: list[str]
    prog_bar: list[bool]
    batch_size: int
    write: bool
    """Whether the loggers write this step (Lightning's ``log_every_n_steps`` rule at that step)."""
    copy: HostCopy


def stage(
    tensors: dict[str, Tensor], numbers: dict[str, float], device: torch.device, prog_bar: tuple[str, ...] = (),
    *, step: int, epoch: int, batch_size: int, write: bool,
) -> StepValues:  # fmt: skip
    """Start copying a step's scalar tensors and Python numbers to the host, in one vector: no host sync.

    Example: ``stage({"train/loss": loss}, {"train/num_samples": 9.0}, loss.device, step=4, epoch=0, batch_size=1,
    write=True)`` gives ``names == ["train/loss", "train/num_samples"]`` and, once copied, ``[loss, 9.0]``."""
    parts = []
    if tensors:
        # a value that is not a scalar fails here, as Lightning's ``self.log`` would
        parts.append(torch.stack([t.detach().to(device, torch.float32).reshape(()) for t in tensors.values()]))
    if numbers:
        parts.append(to_device(torch.tensor(list(numbers.values()), dtype=torch.float32), device))
    vector = torch.cat(parts) if parts else torch.zeros(0, device=device)
    names = [*tensors, *numbers]
    return StepValues(step, epoch, names, [n in prog_bar for n in names], batch_size, write, HostCopy.start(vector))


def values_of(staged: StepValues) -> dict[str, Tensor]:
    """The staged values as CPU scalars, by name (waits for the copy only if it has not completed)."""
    host = staged.copy.wait()
    return dict(zip(staged.names, host.unbind())) if staged.names else {}
