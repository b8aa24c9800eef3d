"""Moving tensors to the device without making the host wait."""

import torch
from torch import Tensor


def to_device(x: Tensor, device: torch.device | str) -> Tensor:
    """``x`` on ``device``. From the CPU to a CUDA device the copy goes through pinned memory and does not block:
    a copy from pageable memory synchronises the host with the GPU (a training step made a dozen of them). The
    tensor is made contiguous first, since an expanded tensor cannot be pinned in place. Otherwise ``x.to(device)``."""
    device = torch.device(device)
    if device.type == "cuda" and x.device.type == "cpu":
        return x.contiguous().pin_memory().to(device, non_blocking=True)
    return x.to(device)
