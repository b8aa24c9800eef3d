"""CUDA-graph replay of a frozen network's forward pass.

A guidance calls its frozen UNet with the same shapes every step, under ``no_grad``; on an H100 the MVDream UNet
at the stage-1 shape is launch-bound: 31 ms eager vs 12 ms replayed from a CUDA graph
(``benchmarks/results/mvdream_unet_nvidia-h100-80gb-hbm3.json``). :class:`GraphedForward` captures one graph per
input signature (shapes, dtypes, device, and the autocast state it is called under) and replays it; anything not on
CUDA runs eagerly.
"""

import contextlib
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn


def call_signature(tensors: tuple[Tensor, ...]) -> tuple:
    """What a captured graph is specific to: each input's shape, dtype and device, and whether autocast is on for
    the first input's device type, with which dtype (a graph captured under fp16 autocast replays fp16 kernels)."""
    device_type = tensors[0].device.type
    autocast = torch.is_autocast_enabled(device_type)
    state = (autocast, torch.get_autocast_dtype(device_type) if autocast else None)
    return (state, *((tuple(t.shape), t.dtype, t.device) for t in tensors))


def capture_autocast(dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """The autocast state a graph is captured under: none, or ``dtype`` with the cast cache off (a cached cast must
    not outlive the capture)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype, cache_enabled=False)


class GraphedForward:
    """Wrap ``fn(*tensors) -> Tensor`` (a pure function of its tensor arguments, no host syncs inside).

    Inputs are copied into static buffers before each replay and the output is cloned, so callers never see the
    graph's own memory. Graphs are captured lazily after ``warmup`` eager calls on a side stream (which also warms
    up cuDNN/cuBLAS autotuning), and only under ``torch.no_grad``. Under autocast (a guidance that keeps the
    trainer's mixed precision), the graph is captured with the same autocast dtype and autocast's cast cache off
    (a cached cast must not outlive the capture), one graph per autocast state (:func:`call_signature`).
    """

    def __init__(self, fn: Callable[..., Tensor], warmup: int = 3) -> None:
        self.fn = fn
        self.warmup = warmup
        self.graphs: dict[tuple, tuple] = {}

    def __call__(self, *tensors: Tensor) -> Tensor:
        if not tensors[0].is_cuda or torch.is_grad_enabled():
            return self.fn(*tensors)
        key = call_signature(tensors)
        with torch.cuda.device(tensors[0].device):  # a placed guidance may live on another GPU
            entry = self.graphs.get(key)
            if entry is None:
                entry = self._capture(tensors, autocast_dtype=key[0][1])
                self.graphs[key] = entry
            graph, static_in, static_out = entry
            for dst, src in zip(static_in, tensors):
                dst.copy_(src)
            graph.replay()
            return static_out.clone()

    def reset(self) -> None:
        """Drop every captured graph (and its memory pool): the next no-grad CUDA call captures again. Needed after
        anything that gives the wrapped network's parameters new storage (a move or cast), since a graph reads the
        addresses it was captured with; in-place updates (optimizer steps, ``load_state_dict``) need no reset."""
        self.graphs.clear()

    def _capture(self, tensors: tuple[Tensor, ...], autocast_dtype: torch.dtype | None = None) -> tuple:
        static_in = [t.clone() for t in tensors]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), capture_autocast(autocast_dtype):
            for _ in range(self.warmup):
                self.fn(*static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), capture_autocast(autocast_dtype):
            static_out = self.fn(*static_in)
        return graph, static_in, static_out


class _TrainableCall(nn.Module):
    """``fn`` as a module whose parameters are exactly ``trainable``'s: what ``make_graphed_callables`` takes the
    gradient to (the frozen network ``fn`` closes over is not a child, so its weights are neither graph inputs nor
    listed)."""

    def __init__(self, fn: Callable[..., Tensor], trainable: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.trainable = trainable

    def forward(self, *tensors: Tensor) -> Tensor:
        return self.fn(*tensors)


class GraphedTrainForward:
    """Wrap ``fn(*tensors) -> Tensor`` whose gradients reach only the parameters of ``trainable`` (none of the
    tensors requires grad): forward and backward are replayed from CUDA graphs.

    For a frozen network that trains a few adapters (the VSD guidance's LoRA loss) the eager forward and backward
    launch thousands of small kernels with the same shapes every step, and the host launching them is the bottleneck.
    Captured with ``torch.cuda.make_graphed_callables`` (a forward and a backward graph sharing one memory pool)
    lazily, on the first CUDA call with gradients enabled, one pair per call signature (:func:`call_signature`;
    under autocast, captured with that autocast dtype and the cast cache off, like :class:`GraphedForward`) and set
    of trainable parameters that require a gradient.
    Anything else (CPU, ``no_grad``, an input that requires grad) runs ``fn`` eagerly.

    Rules for the caller (those of ``make_graphed_callables``): ``fn`` makes no host sync and has no data-dependent
    control flow; the trainable parameters keep their storage (in-place optimizer steps are seen by every replay;
    after a move or cast call :meth:`reset`); the output is the graph's static buffer, overwritten by the next
    call, so call once per backward and do not keep the output across steps.
    """

    def __init__(self, fn: Callable[..., Tensor], trainable: nn.Module, warmup: int = 3) -> None:
        self.fn = fn
        self.trainable = trainable
        self.warmup = warmup
        self.graphs: dict[tuple, Callable[..., Tensor]] = {}

    def __call__(self, *tensors: Tensor) -> Tensor:
        if not tensors[0].is_cuda or not torch.is_grad_enabled() or any(t.requires_grad for t in tensors):
            return self.fn(*tensors)
        signature = call_signature(tensors)
        # which parameters need a gradient is part of what a backward graph computes: a change captures anew
        key = (signature, tuple(p.requires_grad for p in self.trainable.parameters()))
        with torch.cuda.device(tensors[0].device):
            graphed = self.graphs.get(key)
            if graphed is None:
                graphed = self._capture(tensors, autocast_dtype=signature[0][1])
                self.graphs[key] = graphed
            return graphed(*tensors)

    def reset(self) -> None:
        """Drop the captured graphs (see :meth:`GraphedForward.reset`)."""
        self.graphs.clear()

    def _capture(self, tensors: tuple[Tensor, ...], autocast_dtype: torch.dtype | None) -> Callable[..., Tensor]:
        module = _TrainableCall(self.fn, self.trainable)
        with capture_autocast(autocast_dtype), warnings.catch_warnings():
            # the warm-up runs on a side stream while the parameters' gradient accumulators were made on the default
            # one: torch warns once per capture; replays run on the caller's stream
            warnings.filterwarnings("ignore", message="The AccumulateGrad node's stream does not match")
            return torch.cuda.make_graphed_callables(
                module, tuple(t.clone() for t in tensors), num_warmup_iters=self.warmup, allow_unused_input=True
            )
