"""The experiment config: loading YAML files and overrides, the top-level schema and trial folders.

Files may ``extends:`` a parent file, or a list of them merged in order (paths relative to the child), and hold
only the differences. A mapping that
carries ``_replace_: true`` replaces the parent's mapping wholesale instead of being merged into it (used when a
variant swaps a module type, e.g. the low-VRAM renderer, whose keys differ). Several ``--config`` files are merged
in order. Command-line ``key=value`` overrides are merged last, *before* interpolations are resolved, so
``data.*`` overrides propagate to the ``system.*`` keys that interpolate them (4D-fy's behaviour).
"""

import dataclasses
import datetime
import inspect
import os
from collections.abc import Mapping
from pathlib import Path
from collections.abc import Callable
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fourdfy.config import ConfigError, child_slot, did_you_mean, parse_config

REPLACE_MARK = "_replace_"
EXTENDS_KEY = "extends"
TIMESTAMP_ENV = "FOURDFY_TIMESTAMP"


# --------------------------------------------------------------------------------------------------------------
# Resolvers (the ones 4D-fy's configs and users rely on)
# --------------------------------------------------------------------------------------------------------------

_RESOLVERS: dict[str, Callable[..., Any]] = {
    "rmspace": lambda s, sub: str(s).replace(" ", sub),
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "idiv": lambda a, b: a // b,
    "basename": lambda p: os.path.basename(p),
    "tuple2": lambda s: [float(s), float(s)],
    "gt0": lambda s: s > 0,
    "not": lambda s: not s,
    "calc_exp_lr_decay_rate": lambda factor, n: factor ** (1.0 / n),
    "cmaxgt0": lambda s: (max(s[1:3]) if isinstance(s, (list, tuple)) else s) > 0,
}


def register_resolvers() -> None:
    """Register the config resolvers with OmegaConf (idempotent)."""
    for name, fn in _RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_resolver(name, fn, replace=False, use_cache=False)


# --------------------------------------------------------------------------------------------------------------
# Loading and merging
# --------------------------------------------------------------------------------------------------------------


def merge_trees(base: Any, over: Any) -> Any:
    """Deep-merge two plain config trees; ``over`` wins. Mappings marked ``_replace_: true`` replace wholesale."""
    if isinstance(over, Mapping):
        if over.get(REPLACE_MARK) is True or not isinstance(base, Mapping):
            return strip_markers(over)
        out = dict(base)
        for key, value in over.items():
            if key == REPLACE_MARK:
                continue
            out[key] = merge_trees(base[key], value) if key in base else strip_markers(value)
        return out
    return over


def strip_markers(tree: Any) -> Any:
    """Remove ``_replace_`` markers from a tree."""
    if isinstance(tree, Mapping):
        return {k: strip_markers(v) for k, v in tree.items() if k != REPLACE_MARK}
    if isinstance(tree, list):
        return [strip_markers(v) for v in tree]
    return tree


def load_yaml_tree(path: str | Path, _seen: tuple = ()) -> dict:
    """Load one YAML config file, following ``extends:`` parents; interpolations are kept unresolved."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: `extends` forms a cycle: {' -> '.join(map(str, _seen))}")
    try:
        tree = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: cannot read YAML: {e}") from None
    except Exception as e:  # yaml.YAMLError and friends
        raise ConfigError(f"{path}: cannot read YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping at the top level")
    parents = tree.pop(EXTENDS_KEY, None)
    if parents is None:
        return tree  # markers stay until the tree is merged over its base (another file or {})
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f"{path}: `extends` must be a file name or a list of file names")
    base: dict = {}
    for parent in parents:
        parent_path = (path.parent / parent) if not os.path.isabs(parent) else Path(parent)
        base = merge_trees(base, load_yaml_tree(parent_path, _seen + (path.resolve(),)))
    return merge_trees(base, tree)


def check_overrides(overrides: list[str]) -> None:
    """Every extra command-line token must be ``key=value``; unknown ``--flags`` are rejected."""
    for token in overrides:
        if token.startswith("-"):
            raise ConfigError(f"unknown command-line flag {token!r} (overrides are written key=value, without dashes)")
        if "=" not in token:
            raise ConfigError(f"cannot read the override {token!r}: write it as key=value, e.g. seed=1")


def load_raw_config(paths: list[str], overrides: list[str], n_gpus: int = 1) -> dict:
    """Merge config files and overrides and resolve interpolations.

    Returns:
        The resolved tree as plain dicts/lists. Mandatory values that are still ``???`` stay as the string
        ``"???"`` and are reported by the strict parser, except inside interpolations, reported here.
    """
    register_resolvers()
    if not paths:
        raise ConfigError("no --config file given")
    tree: dict = {}
    for p in paths:
        tree = merge_trees(tree, load_yaml_tree(p))
    check_overrides(overrides)
    cli = []
    for token in overrides:
        try:
            cli.append(OmegaConf.from_dotlist([token]))
        except Exception as e:  # yaml.YAMLError or an OmegaConf grammar error
            key, value = token.split("=", 1)
            raise ConfigError(
                f"{key}: cannot read the value {value!r} ({type(e).__name__}); quote it, e.g. {key}='{value}'"
            ) from None
    try:
        cfg = OmegaConf.create(tree)
        cfg = OmegaConf.merge(cfg, *cli, {"n_gpus": n_gpus})
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as e:
        msg = str(e)
        if "Missing mandatory value" in msg:
            key = msg.split("Missing mandatory value:")[-1].split("\n")[0].strip()
            raise ConfigError(
                f"{key}: missing mandatory value ('???'), needed by an interpolation. Set it on the command line, "
                f'e.g. {key}="a panda dancing"'
            ) from None
        raise ConfigError(f"cannot resolve the config: {msg}") from None
    return resolved


# --------------------------------------------------------------------------------------------------------------
# The experiment schema
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ExperimentConfig:
    """The top level of every config file (4D-fy's ``ExperimentConfig``)."""

    name: str = "default"
    """Experiment name; the trial folder lives in ``{exp_root_dir}/{name}``."""
    description: str = ""
    """Free text, stored in parsed.yaml."""
    tag: str = ""
    """Trial name prefix; 4D-fy's configs set it to the prompt with spaces replaced by ``_``."""
    seed: int = 0
    """Global seed (ranks derive their own, see ``fourdfy.systems.base``)."""
    use_timestamp: bool = True
    """Append ``@YYYYmmdd-HHMMSS`` to the trial name."""
    timestamp: Optional[str] = None
    """The suffix actually used; stored in parsed.yaml so relaunching from it reuses the trial folder."""
    exp_root_dir: str = "outputs"
    """Root folder of all experiments."""
    exp_dir: str = ""
    """Computed: ``{exp_root_dir}/{name}`` (accepted in input so parsed.yaml reloads; always recomputed)."""
    trial_name: str = ""
    """Computed: ``{tag}{timestamp}``."""
    trial_dir: str = ""
    """Computed: ``{exp_dir}/{trial_name}``."""
    n_gpus: int = 1
    """Number of GPUs, set from ``--gpu``."""
    resume: Optional[str] = None
    """Continue a run from this Lightning checkpoint (full training state, same stage)."""
    data_type: str = ""
    """Registered data module type."""
    data: dict = child_slot("datamodule", "data_type")
    """Config of the data module."""
    system_type: str = ""
    """Registered system type."""
    system: dict = child_slot("system", "system_type")
    """Config of the system."""
    trainer: dict = dataclasses.field(default_factory=dict)
    """Keyword arguments of ``pytorch_lightning.Trainer`` (checked against its signature)."""
    checkpoint: dict = dataclasses.field(default_factory=dict)
    """Keyword arguments of the ``ModelCheckpoint`` callback (checked against its signature)."""

    def __post_init__(self) -> None:
        if not self.tag and not self.use_timestamp:
            raise ConfigError("tag: either tag must be set or use_timestamp must be true")
        if self.timestamp is None:
            self.timestamp = datetime.datetime.now().strftime("@%Y%m%d-%H%M%S") if self.use_timestamp else ""
        self.exp_dir = os.path.join(self.exp_root_dir, self.name)
        self.trial_name = self.tag + self.timestamp
        self.trial_dir = os.path.join(self.exp_dir, self.trial_name)


def check_kwargs(fn: Callable, kwargs: Mapping[str, Any], path: str, exclude: tuple = ()) -> None:
    """Fail when ``kwargs`` holds a name that ``fn`` does not accept (pass-through config sections)."""
    params = inspect.signature(fn).parameters
    names = [n for n in params if n not in ("self", "args", "kwargs")]
    for key in kwargs:
        if key in exclude:
            raise ConfigError(f"{path}.{key}: set by fourdfy itself; it cannot be configured here.")
        if key not in params:
            raise ConfigError(f"{path}.{key}: unknown key.{did_you_mean(key, names)} Valid keys: {', '.join(names)}.")


def parse_experiment(raw: dict) -> ExperimentConfig:
    """Parse and validate the whole tree: the experiment keys, the trainer/checkpoint sections, the data module
    and the system with all their parts. Nothing is built."""
    from pytorch_lightning import Trainer
    from pytorch_lightning.callbacks import ModelCheckpoint

    from fourdfy.registry import validate

    cfg = parse_config(ExperimentConfig, raw, "")
    check_kwargs(Trainer.__init__, cfg.trainer, "trainer", exclude=("callbacks", "logger", "default_root_dir"))
    check_kwargs(ModelCheckpoint.__init__, cfg.checkpoint, "checkpoint", exclude=("dirpath",))
    if not cfg.data_type:
        raise ConfigError("data_type: missing (a registered datamodule type)")
    if not cfg.system_type:
        raise ConfigError("system_type: missing (a registered system type)")
    validate("datamodule", cfg.data_type, cfg.data, "data")
    validate("system", cfg.system_type, cfg.system, "system")
    return cfg


def load_config(paths: list[str], overrides: list[str] = (), n_gpus: int = 1) -> tuple[ExperimentConfig, dict]:
    """Load, merge, resolve and validate. Returns the parsed config and the resolved tree (for parsed.yaml)."""
    raw = load_raw_config(list(paths), list(overrides), n_gpus)
    cfg = parse_experiment(raw)
    # parsed.yaml stores the computed fields, so relaunching from it reuses the same trial folder
    for key in ("timestamp", "exp_dir", "trial_name", "trial_dir"):
        raw[key] = getattr(cfg, key)
    return cfg, raw


def dump_yaml(tree: Any, path: str | Path) -> None:
    """Write a plain tree as YAML (atomically)."""
    from fourdfy.utils.io import atomic_write_text

    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(tree)))
