"""Guidance base class and its output."""

import dataclasses
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Optional, Union

import torch
from jaxtyping import Float
from torch import Tensor, nn

from fourdfy.guidance import precision as precision_policy
from fourdfy.guidance.cuda_graph import GraphedForward, GraphedTrainForward
from fourdfy.guidance import sds
from fourdfy.utils.base import BaseModule


@dataclasses.dataclass
class GuidanceOutput:
    """Losses of one guidance call, keyed by loss name (``"sds"`` is weighted by ``system.loss.lambda_sds``),
    and statistics to log (never back-propagated). A statistic computed on the device stays a detached 0-dim
    tensor: turning it into a float would make the host wait for the GPU every iteration; the logger reads it when
    it writes."""

    losses: dict[str, Float[Tensor, ""]]
    stats: dict[str, Union[float, Float[Tensor, ""]]] = dataclasses.field(default_factory=dict)


class BaseGuidance(BaseModule):
    """A guidance module. Its frozen pretrained networks are child modules (so Lightning places them), listed in
    ``frozen_modules``: their weights are never written into training checkpoints (the system drops them on save and
    restores them from the live module on load)."""

    kind = "guidance"
    loss_names: ClassVar[tuple[str, ...]] = ()
    """Names of the losses this guidance returns; the system checks each has a ``lambda_<name>`` weight."""
    frozen_modules: ClassVar[tuple[str, ...]] = ()
    """Attribute names of frozen pretrained submodules (excluded from checkpoints)."""

    precision_network: ClassVar[Optional[str]] = None
    """Network family whose measured default ``weights_dtype: auto`` takes
    (:data:`fourdfy.guidance.precision.NETWORK_DEFAULTS`)."""

    @property
    def placement(self) -> "torch.device | None":
        """The device this guidance runs on when its config sets ``device`` (model placement), else None."""
        device = getattr(self.cfg, "device", None)
        return torch.device(device) if device else None

    @property
    def precision(self) -> precision_policy.Precision:
        """Precision of the frozen networks where they are (``weights_dtype`` / ``half_precision_weights``, see
        :mod:`fourdfy.guidance.precision`; always fp32 off CUDA)."""
        first = next(getattr(self, self.frozen_modules[0]).parameters())
        return precision_policy.resolve(self.cfg, first.device, self.precision_network)

    @property
    def weights_dtype(self) -> torch.dtype:
        """dtype of the frozen networks (and of the inputs given to them)."""
        return self.precision.dtype

    def network_math(self) -> AbstractContextManager[None]:
        """Context for calls of the frozen networks: strict fp32 or TF32 matmuls/convolutions as the precision
        says (a no-op for half dtypes and off CUDA)."""
        first = next(getattr(self, self.frozen_modules[0]).parameters())
        return precision_policy.fp32_math(self.precision, first.device)

    def call_frozen(self, fn: Any, x: Tensor) -> Tensor:
        """``fn(x)`` (a frozen network's call) under :meth:`network_math`, its backward to ``x`` included."""
        first = next(getattr(self, self.frozen_modules[0]).parameters())
        return precision_policy.call_with_math(fn, x, self.precision, first.device)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        # 1. with a placement, a move to an accelerator goes to the guidance's own device instead
        target = self.placement
        if target is not None and fn(torch.zeros(())).device.type != "cpu":
            fn = lambda t: t.to(device=target)  # noqa: E731
        out = super()._apply(fn, recurse)
        # 2. the frozen networks take the precision that fits the device (trainable parts keep theirs)
        dtype = self.weights_dtype
        for name in self.frozen_modules:
            module = getattr(self, name, None)
            if module is not None and next(module.parameters()).dtype != dtype:
                module.to(dtype)
        # 3. new storage (a move or cast) is not what captured CUDA graphs read: every graphed call drops its graphs
        #    (in-place optimizer steps keep the storage and need no reset)
        for value in vars(self).values():
            if isinstance(value, (GraphedForward, GraphedTrainForward)):
                value.reset()
        return out

    def guide(self, rgb: Float[Tensor, "*clips H W 3"], prompts: Any, batch: Any) -> GuidanceOutput:
        """Call the guidance where it lives: with a placement, renders and cameras are moved to its device and the
        losses come back to the renders' device (autograd follows the copies). ``rgb`` is ``[N, H, W, 3]`` frames for
        an image guidance, ``[B, T, H, W, 3]`` clips for a video guidance."""
        target = self.placement
        if target is None or target == rgb.device:
            return self(rgb, prompts, batch)
        out = self(rgb.to(target), prompts, batch.to(target))
        stats = {k: v.to(rgb.device) if isinstance(v, Tensor) else v for k, v in out.stats.items()}
        return GuidanceOutput({k: v.to(rgb.device) for k, v in out.losses.items()}, stats)

    def freeze(self, module: nn.Module) -> nn.Module:
        """Put a pretrained network in eval mode without gradients."""
        module.eval()
        module.requires_grad_(False)
        return module

    def train(self, mode: bool = True) -> "BaseGuidance":
        # frozen networks stay in eval mode (video UNets have dropout) even when Lightning calls .train()
        super().train(mode)
        for name in self.frozen_modules:
            module = getattr(self, name, None)
            if module is not None:
                module.eval()
        return self

    def frozen_state_keys(self, prefix: str) -> list[str]:
        """State-dict keys (with ``prefix``) belonging to the frozen networks."""
        keys = []
        for name in self.frozen_modules:
            module = getattr(self, name, None)
            if module is not None:
                keys += [f"{prefix}{name}.{k}" for k in module.state_dict().keys()]
        return keys

    @staticmethod
    def images_to_bchw(rgb: Float[Tensor, "B H W 3"], size: tuple[int, int]) -> Float[Tensor, "B 3 h w"]:
        """Channels-first images bilinearly resized to ``size`` (height, width), values kept in [0, 1]."""
        x = rgb.permute(0, 3, 1, 2)
        if tuple(x.shape[-2:]) != tuple(size):
            x = torch.nn.functional.interpolate(x, size, mode="bilinear", align_corners=False)
        return x


class AnnealedStepGuidance(BaseGuidance):
    """A guidance whose timestep range follows :func:`fourdfy.guidance.sds.annealed_step_range` of its config and
    the training position (the video guidances); the position is kept for scheduled values such as ``grad_clip``.
    Subclasses set ``num_train_timesteps`` in ``configure``."""

    def step_range(self, epoch: int, global_step: int) -> tuple[int, int]:
        """``(min_step, max_step)`` at a training position."""
        return sds.annealed_step_range(self.cfg, epoch, global_step, self.num_train_timesteps)

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        self.min_step, self.max_step = self.step_range(epoch, global_step)
        self._position = (epoch, global_step)
