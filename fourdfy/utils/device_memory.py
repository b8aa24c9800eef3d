"""How much more memory PyTorch can still use on a device (for choices that trade memory for speed)."""

from typing import Optional

import torch


def available_device_memory(device: torch.device) -> Optional[int]:
    """Bytes that PyTorch's caching allocator can still hand out on ``device``: the blocks it holds unused, plus
    what it may still reserve -- the driver's free memory, within any per-process cap
    (``torch.cuda.set_per_process_memory_fraction``, as the benchmark's ``--memory-cap-gib`` sets). ``None`` on a
    device other than CUDA (nothing to measure: the caller keeps its memory-saving default). Reads the driver, no
    stream synchronisation."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    free, total = torch.cuda.mem_get_info(index)
    reserved = torch.cuda.memory_reserved(index)
    allocated = torch.cuda.memory_allocated(index)
    fraction = torch.cuda.get_per_process_memory_fraction(index)
    may_reserve = min(free, max(0, int(fraction * total) - reserved))
    return may_reserve + (reserved - allocated)


def fits_in_available_memory(n_bytes: int, device: torch.device, fraction: float) -> bool:
    """Whether ``n_bytes`` of new activations stay within ``fraction`` of :func:`available_device_memory` on
    ``device``; the rest is left to what the step allocates afterwards and to the allocator's rounding. False with
    ``fraction <= 0`` and on a device that cannot be measured (the caller keeps its memory-saving path).

    Example: a render of 12.4 M samples at 3500 bytes (43.4 GB) fits in half of 120 GB available, not in half of
    10 GB."""
    if fraction <= 0:
        return False
    available = available_device_memory(device)
    return available is not None and n_bytes <= fraction * available
