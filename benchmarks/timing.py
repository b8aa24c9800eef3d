"""Timing of one call, the way every micro-benchmark here does it: warm-up calls, then CUDA events around each
timed call on a GPU (``perf_counter`` on CPU), reported as median / p10 / p90 milliseconds."""

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def time_calls(fn: Callable[[], Any], device: torch.device, iters: int, warmup: int) -> dict[str, float]:
    """Median / p10 / p90 milliseconds per call of ``fn`` over ``iters`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]  # noqa: E731
    return {"median_ms": statistics.median(times), "p10_ms": q(0.1), "p90_ms": q(0.9), "iters": len(times)}
