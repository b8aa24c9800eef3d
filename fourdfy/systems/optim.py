"""Optimizer construction: one parameter group per attribute path of the system (4D-fy's ``parse_optimizer``).

``system.optimizer.params`` maps a dotted attribute path (``geometry.encoding``, ``background``,
``guidance_single_view``) to the group's options (``lr``...). A path that does not exist on the system is an
error; a path that names a part this stage did not build (``None``) gives an empty group and a log line. A
parameter may belong to one group only.

Trainable parameters that no group names are left untrained, as in 4D-fy (its optimizer simply never sees them):
they are frozen (``requires_grad=False``, so no gradient is computed for them either) and named in one warning.
4D-fy's ``fourdfy_stage_2_low_vram_deformation.yaml`` relies on this: it has no ``guidance_single_view`` group, so
its VSD LoRA and camera embedding stay at their initialisation. ``ungrouped_params: error`` refuses such a config
instead.
"""

import dataclasses
import inspect
import logging

import torch
from torch import nn

from fourdfy.config import ConfigError, choice, did_you_mean

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
    fused: bool = True
    """On CUDA, step with torch's fused implementation of the optimizer (one kernel over all parameters instead of
    several per tensor list; same update up to rounding) when it has one and ``args`` sets neither ``fused`` nor
    ``foreach``. false: torch's default implementation. A fast path (``benchmarks/iteration.py`` turns it off)."""
    ungrouped_params: str = choice("freeze", ("freeze", "error"), "Trainable parameters in no group.")
    """Trainable parameters in no group: ``freeze`` them with one warning (4D-fy's behaviour: untrained), or
    ``error`` (refuse the config)."""

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
        head, _, rest = path.partition(".")
        alias = getattr(system, "optimizer_alias", lambda name: None)(head)
        target = resolve_attribute(system, alias + (f".{rest}" if rest else "") if alias else path, group_key)
        if alias is not None and isinstance(target, nn.Module):
            # a 4D-fy alias group takes only the trainable parameters: never the frozen pretrained networks
            target = [p for p in target.parameters() if p.requires_grad]
        if target is None:
            logger.info("optimizer group %s is empty: that part is not built in this stage", path)
            params = []
        elif isinstance(target, nn.Module):
            params = list(target.parameters())
        elif isinstance(target, nn.Parameter):
            params = [target]
        elif isinstance(target, list):
            params = target
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
    orphans = [(n, p) for n, p in system.named_parameters() if p.requires_grad and id(p) not in seen]
    if orphans:
        summary = summarize_parameters(orphans)
        if cfg.ungrouped_params == "error":
            raise ConfigError(
                f"{key}.params: trainable parameters in no optimizer group: {summary}. Add a group for them, or set "
                f"{key}.ungrouped_params=freeze to leave them untrained (4D-fy's behaviour)."
            )
        for _, p in orphans:
            p.requires_grad_(False)
        logger.warning(
            "%s.params: trainable parameters in no optimizer group are frozen (left untrained, as 4D-fy does): %s. "
            "Add a group to train them, or set %s.ungrouped_params=error to refuse such configs.", key, summary, key,
        )  # fmt: skip
    args = dict(cfg.args)
    devices = {p.device.type for g in groups for p in g["params"]}
    if use_fused(opt_cls, cfg, devices):
        args["fused"] = True
    return opt_cls(groups, **args)


def use_fused(opt_cls: type, cfg: OptimizerConfig, devices: set[str]) -> bool:
    """Whether :func:`build_optimizer` asks ``opt_cls`` for its fused implementation: ``cfg.fused`` is on, the class
    takes a ``fused`` argument, ``cfg.args`` chose no implementation itself, and every parameter is on CUDA."""
    takes_fused = "fused" in inspect.signature(opt_cls.__init__).parameters
    chosen = "fused" in cfg.args or "foreach" in cfg.args
    return cfg.fused and takes_fused and not chosen and devices == {"cuda"}


def summarize_parameters(named: list[tuple[str, nn.Parameter]], depth: int = 2) -> str:
    """``prefix (N tensors, M values)`` per leading ``depth`` name components, in first-seen order."""
    counts: dict[str, list[int]] = {}
    for name, p in named:
        prefix = ".".join(name.split(".")[:depth])
        entry = counts.setdefault(prefix, [0, 0])
        entry[0] += 1
        entry[1] += p.numel()
    return ", ".join(
        f"{prefix} ({n} tensor{'s' if n != 1 else ''}, {values:,} values)" for prefix, (n, values) in counts.items()
    )
