"""Optimizer construction: one parameter group per attribute path of the system (4D-fy's ``parse_optimizer``).

``system.optimizer.params`` maps a dotted attribute path (``geometry.encoding``, ``background``,
``guidance_single_view``) to the group's options (``lr``...). A path that does not exist on the system is an
error; a path that names a part this stage did not build (``None``) gives an empty group and a log line. Every
trainable parameter must belong to exactly one group, otherwise the optimizer would silently skip it.
"""

import dataclasses
import inspect
import logging

import torch
from torch import nn

from fourdfy.config import ConfigError, did_you_mean

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class OptimizerConfig:
    """``system.optimizer``."""

    name: str = "AdamW"
    """A class of ``torch.optim``."""
    args: dict = dataclasses.field(default_factory=dict)
    """Keyword arguments of the optimizer (checked against its signature)."""
    params: dict = dataclasses.field(default_factory=dict)
    """Parameter groups: ``{attribute.path: {lr: ..., ...}}``."""

    def __post_init__(self) -> None:
        opt_cls = optimizer_class(self.name, "name")
        valid = inspect.signature(opt_cls.__init__).parameters
        for arg in self.args:
            if arg not in valid or arg in ("self", "params"):
                raise ConfigError(f"args.{arg}: not an argument of torch.optim.{self.name}.{did_you_mean(arg, valid)}")
        for path, options in self.params.items():
            where = f"params[{path}]" if "." in path else f"params.{path}"
            if not isinstance(options, dict):
                raise ConfigError(f"{where}: expected a mapping of group options such as {{lr: 0.01}}")
            for opt, value in options.items():
                if opt not in valid or opt in ("self", "params"):
                    raise ConfigError(f"{where}.{opt}: not an option of torch.optim.{self.name}.{did_you_mean(opt, valid)}")
                default = valid[opt].default  # a numeric default (lr, weight_decay...) takes a number
                if isinstance(default, (int, float)) and not isinstance(default, bool):
                    if isinstance(value, bool) or not isinstance(value, (int, float)):
                        raise ConfigError(f"{where}.{opt}: expected a number, got {value!r}")


def optimizer_class(name: str, key: str) -> type:
    """``torch.optim.<name>``, or a ConfigError naming ``key``."""
    cls = getattr(torch.optim, name, None)
    if not inspect.isclass(cls) or not issubclass(cls, torch.optim.Optimizer):
        raise ConfigError(f"{key}: {name!r} is not a torch.optim optimizer")
    return cls


def resolve_attribute(root: nn.Module, path: str, key: str) -> object:
    """Follow a dotted attribute path (``geometry.encoding.encoding``) on the system."""
    obj: object = root
    for i, part in enumerate(path.split(".")):
        if obj is None:
            return None
        if not hasattr(obj, part):
            names = [n for n, _ in obj.named_children()] if isinstance(obj, nn.Module) else dir(obj)
            where = ".".join(path.split(".")[:i]) or "the system"
            raise ConfigError(f"{key}: {where} has no attribute {part!r}.{did_you_mean(part, names)}")
        obj = getattr(obj, part)
    return obj


def build_optimizer(system: nn.Module, cfg: OptimizerConfig, key: str = "system.optimizer") -> torch.optim.Optimizer:
    """Build the optimizer with one group per entry of ``cfg.params`` (named by the path)."""
    opt_cls = optimizer_class(cfg.name, f"{key}.name")
    groups, seen = [], {}
    for path, options in cfg.params.items():
        group_key = f"{key}.params[{path}]" if "." in path else f"{key}.params.{path}"
        target = resolve_attribute(system, path, group_key)
        if target is None:
            logger.info("optimizer group %s is empty: that part is not built in this stage", path)
            params = []
        elif isinstance(target, nn.Module):
            params = list(target.parameters())
        elif isinstance(target, nn.Parameter):
            params = [target]
        else:
            raise ConfigError(f"{group_key}: {path} is a {type(target).__name__}, not a module or parameter")
        for p in params:
            if id(p) in seen:
                raise ConfigError(
                    f"{group_key}: its parameters are already in group {seen[id(p)]!r}. A plain dotted override "
                    f"such as system.optimizer.params.geometry.encoding.lr creates a nested group; write "
                    f"'system.optimizer.params[geometry.encoding].lr=...' (brackets) instead."
                )
            seen[id(p)] = path
        groups.append({"params": params, "name": path, **options})
    missing = [n for n, p in system.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise ConfigError(
            f"{key}.params: trainable parameters in no optimizer group: {', '.join(missing[:8])}"
            f"{' ...' if len(missing) > 8 else ''}. Add a group for them (or freeze them)."
        )
    return opt_cls(groups, **cfg.args)
