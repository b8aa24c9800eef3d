"""Guidance base class and its output."""

import dataclasses
from typing import ClassVar

import torch
from jaxtyping import Float
from torch import Tensor, nn

from fourdfy.utils.base import BaseModule


@dataclasses.dataclass
class GuidanceOutput:
    """Losses of one guidance call, keyed by loss name (``"sds"`` is weighted by ``system.loss.lambda_sds``),
    and statistics to log (never back-propagated)."""

    losses: dict[str, Float[Tensor, ""]]
    stats: dict[str, float] = dataclasses.field(default_factory=dict)


class BaseGuidance(BaseModule):
    """A guidance module. Its frozen pretrained networks are child modules (so Lightning places them), listed in
    ``frozen_modules``: their weights are never written into training checkpoints (the system drops them on save and
    restores them from the live module on load)."""

    kind = "guidance"
    loss_names: ClassVar[tuple[str, ...]] = ()
    """Names of the losses this guidance returns; the system checks each has a ``lambda_<name>`` weight."""
    frozen_modules: ClassVar[tuple[str, ...]] = ()
    """Attribute names of frozen pretrained submodules (excluded from checkpoints)."""

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
