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
import hashlib
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Optional, Union

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fourdfy.config import ConfigError, check_value, child_slot, did_you_mean, join_path, parse_config
from fourdfy.registry import validate

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
    """Every extra command-line token must be ``key=value``; unknown ``--flags`` are rejected (all at once)."""
    errors = []
    for token in overrides:
        if token.startswith("-"):
            errors.append(f"unknown command-line flag {token!r} (overrides are written key=value, without dashes)")
        elif "=" not in token:
            errors.append(f"cannot read the override {token!r}: write it as key=value, e.g. seed=1")
    if errors:
        raise ConfigError(*errors)


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
    cli, errors = [], []
    for token in overrides:
        try:
            cli.append(OmegaConf.from_dotlist([token]))
        except Exception as e:  # yaml.YAMLError or an OmegaConf grammar error
            key, value = token.split("=", 1)
            errors.append(
                f"{key}: cannot read the value {value!r} ({type(e).__name__}); quote it, e.g. {key}='{value}'"
            )
    if errors:
        raise ConfigError(*errors)
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
# Trial names: safe, bounded path components
# --------------------------------------------------------------------------------------------------------------

TAG_MAX_BYTES = 120
"""Longest tag kept whole (UTF-8 bytes); a longer one is cut and ends in a short hash of the whole prompt."""
TRIAL_NAME_MAX_BYTES = 200
"""File systems allow 255 bytes per name; the rest is left for ``@timestamp`` and a ``-N`` collision suffix."""
_UNSAFE_TAG_CHARS = re.compile(r"[^\w\-.,+]")


def safe_tag(tag: str) -> str:
    """A trial-name prefix that is one safe, bounded folder name.

    Spaces become ``_`` (4D-fy's ``a_panda_dancing``), as does every character other than letters, digits and
    ``_-.,+`` (so ``/`` cannot nest folders and ``..`` cannot climb out of ``exp_root_dir``); leading dots become
    ``_`` (no hidden or ``..`` names). A tag longer than :data:`TAG_MAX_BYTES` is cut and gets ``-<md5[:8]>`` of the
    whole tag, so two long prompts that differ only at the end still get different folders. Idempotent.
    """
    safe = _UNSAFE_TAG_CHARS.sub("_", tag)
    safe = re.sub(r"^\.+", lambda m: "_" * len(m.group()), safe)
    if len(safe.encode()) > TAG_MAX_BYTES:
        digest = hashlib.md5(tag.encode()).hexdigest()[:8]
        cut = safe
        while len(cut.encode()) > TAG_MAX_BYTES - len(digest) - 1:
            cut = cut[:-1]
        safe = f"{cut}-{digest}"
    return safe


def _check_folder_name(value: str, key: str) -> None:
    """``value`` must be usable as one folder name inside ``exp_root_dir``."""
    if value in ("", ".", "..") or "/" in value or "\\" in value or "\0" in value:
        raise ConfigError(f"{key}: {value!r} is not a folder name (no '/', not '.' or '..')")
    if len(value.encode()) > TRIAL_NAME_MAX_BYTES:
        raise ConfigError(f"{key}: {value[:40]!r}... is {len(value.encode())} bytes; at most {TRIAL_NAME_MAX_BYTES}")


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
    """Trial name prefix; 4D-fy's configs set it to the prompt with spaces replaced by ``_``. Made a safe folder
    name by :func:`safe_tag` (other unsafe characters become ``_``, long prompts are cut)."""
    seed: int = 0
    """Global seed (ranks derive their own, see ``fourdfy.systems.base``)."""
    use_timestamp: bool = True
    """Append ``@YYYYmmdd-HHMMSS`` to the trial name."""
    timestamp: Optional[str] = None
    """The suffix actually used; stored in parsed.yaml so relaunching from it reuses the trial folder."""
    exp_root_dir: str = "outputs"
    """Root folder of all experiments; nothing is written outside it (except the text-embedding cache)."""
    exp_dir: str = ""
    """Computed: ``{exp_root_dir}/{name}`` (accepted in input so parsed.yaml reloads; always recomputed)."""
    trial_name: str = ""
    """Computed: ``{tag}{timestamp}``."""
    trial_dir: str = ""
    """Computed: ``{exp_dir}/{trial_name}``. A new training run never shares it: if the folder exists (two
    launches in the same second) the run gets ``{trial_dir}-1``, ``-2``... (see ``fourdfy.trial``)."""
    n_gpus: int = 1
    """Number of GPUs, set from ``--gpu``."""
    resume: Optional[str] = None
    """Continue a run from this Lightning checkpoint (full training state, same stage)."""
    freeze_gc: bool = True
    """When training starts, move every Python object alive (the networks, their configs) out of the cyclic garbage
    collector's reach (:mod:`fourdfy.garbage_collection`): its collections then walk only what the loop creates.
    Changes no number; false leaves the collector as Python sets it."""
    data_type: str = ""
    """Registered data module type."""
    data: dict = child_slot("datamodule", "data_type")
    """Config of the data module."""
    system_type: str = ""
    """Registered system type."""
    system: dict = child_slot("system", "system_type")
    """Config of the system."""
    trainer: dict = dataclasses.field(default_factory=dict)
    """Keyword arguments of ``pytorch_lightning.Trainer`` (names and common types checked, see ``TRAINER_ARGS``)."""
    checkpoint: dict = dataclasses.field(default_factory=dict)
    """Keyword arguments of the ``ModelCheckpoint`` callback (see ``CHECKPOINT_ARGS``)."""

    def __post_init__(self) -> None:
        if not self.tag and not self.use_timestamp:
            raise ConfigError("tag: either tag must be set or use_timestamp must be true")
        self.tag = safe_tag(self.tag)
        if self.timestamp is None:
            self.timestamp = datetime.datetime.now().strftime("@%Y%m%d-%H%M%S") if self.use_timestamp else ""
        if not self.exp_root_dir:
            raise ConfigError("exp_root_dir: must not be empty")
        _check_folder_name(self.name, "name")
        self.exp_dir = os.path.join(self.exp_root_dir, self.name)
        self.trial_name = self.tag + self.timestamp
        _check_folder_name(self.trial_name, "timestamp" if self.timestamp and "/" in self.timestamp else "tag")
        self.trial_dir = os.path.join(self.exp_dir, self.trial_name)


# --------------------------------------------------------------------------------------------------------------
# Pass-through sections: Trainer and ModelCheckpoint keyword arguments
# --------------------------------------------------------------------------------------------------------------


def _arg(tp: Any = Any, **metadata: Any) -> tuple[Any, dict]:
    if "range" not in metadata:
        bounds = {k: metadata.pop(k) for k in ("ge", "gt", "le", "lt") if k in metadata}
        metadata["range"] = bounds
    return tp, metadata


_PRECISION = Literal[
    64, 32, 16, "64", "32", "16", "bf16", "transformer-engine", "transformer-engine-float16",
    "16-true", "16-mixed", "bf16-true", "bf16-mixed", "32-true", "64-true",
]  # fmt: skip
_COUNT = Union[int, float]

TRAINER_ARGS: dict[str, tuple[Any, dict]] = {
    # what 4D-fy's configs and README set, typed and bounded
    "max_steps": _arg(int, ge=1),
    "log_every_n_steps": _arg(Optional[int], ge=1),
    "num_sanity_val_steps": _arg(Optional[int], ge=-1),
    "val_check_interval": _arg(Optional[_COUNT], gt=0),
    "check_val_every_n_epoch": _arg(Optional[int], ge=1),
    "enable_progress_bar": _arg(Optional[bool]),
    "enable_checkpointing": _arg(Optional[bool]),
    "enable_model_summary": _arg(Optional[bool]),
    "precision": _arg(Optional[_PRECISION]),
    "accumulate_grad_batches": _arg(int, ge=1),
    "gradient_clip_val": _arg(Optional[_COUNT], ge=0),
    "gradient_clip_algorithm": _arg(Optional[Literal["norm", "value"]]),
    "max_epochs": _arg(Optional[int], ge=-1),
    "min_epochs": _arg(Optional[int], ge=0),
    "min_steps": _arg(Optional[int], ge=-1),
    "limit_train_batches": _arg(Optional[_COUNT], ge=0),
    "limit_val_batches": _arg(Optional[_COUNT], ge=0),
    "limit_test_batches": _arg(Optional[_COUNT], ge=0),
    "limit_predict_batches": _arg(Optional[_COUNT], ge=0),
    "overfit_batches": _arg(_COUNT, ge=0),
    "fast_dev_run": _arg(Union[bool, int], ge=0),
    "num_nodes": _arg(int, ge=1),
    "deterministic": _arg(Optional[Union[bool, Literal["warn"]]]),
    "benchmark": _arg(Optional[bool]),
    "detect_anomaly": _arg(bool),
    "inference_mode": _arg(bool),
    "use_distributed_sampler": _arg(bool),
    "sync_batchnorm": _arg(bool),
    "barebones": _arg(bool),
    "reload_dataloaders_every_n_epochs": _arg(int, ge=0),
    "enable_autolog_hparams": _arg(bool),
    # accepted as given (checked by Lightning when the trainer is built, before anything is written)
    "accelerator": _arg(),
    "strategy": _arg(),
    "devices": _arg(),
    "max_time": _arg(),
    "profiler": _arg(),
    "plugins": _arg(),
    "model_registry": _arg(),
    # set by fourdfy itself
    "logger": _arg(),
    "callbacks": _arg(),
    "default_root_dir": _arg(),
}
"""Every keyword argument of ``pytorch_lightning.Trainer`` 2.6 (a test keeps this list equal to the installed
Lightning's signature), with the type and range checked when the config is parsed: checking a config does not import
Lightning."""
TRAINER_SET_BY_FOURDFY = ("callbacks", "logger", "default_root_dir")

CHECKPOINT_ARGS: dict[str, tuple[Any, dict]] = {
    "filename": _arg(Optional[str]),
    "monitor": _arg(Optional[str]),
    "verbose": _arg(bool),
    "save_last": _arg(Optional[Union[bool, Literal["link"]]]),
    "save_top_k": _arg(int, ge=-1),
    "save_on_exception": _arg(bool),
    "save_weights_only": _arg(bool),
    "mode": _arg(Literal["min", "max"]),
    "auto_insert_metric_name": _arg(bool),
    "every_n_train_steps": _arg(Optional[int], ge=0),
    "train_time_interval": _arg(),
    "every_n_epochs": _arg(Optional[int], ge=0),
    "save_on_train_epoch_end": _arg(Optional[bool]),
    "enable_version_counter": _arg(bool),
    "dirpath": _arg(),
}
"""Every keyword argument of ``ModelCheckpoint`` 2.6, typed like :data:`TRAINER_ARGS`."""
CHECKPOINT_SET_BY_FOURDFY = ("dirpath", "enable_version_counter")
"""``enable_version_counter`` is always false: ``last.ckpt`` is overwritten, never forked into ``last-v1.ckpt``."""


def check_section(
    kwargs: Any, table: Mapping[str, tuple[Any, dict]], path: str, exclude: tuple = ()
) -> list[str | ConfigError]:
    """Problems of a pass-through section (unknown names with a close match, names fourdfy sets, bad values)."""
    if not isinstance(kwargs, Mapping):
        return [f"{path}: expected a mapping of keyword arguments, got {kwargs!r}"]
    errors: list[str | ConfigError] = []
    names = [n for n in table if n not in exclude]
    for key, value in kwargs.items():
        key_path = join_path(path, str(key))
        if key in exclude:
            errors.append(f"{key_path}: set by fourdfy itself; it cannot be configured here.")
        elif key not in table:
            errors.append(f"{key_path}: unknown key.{did_you_mean(str(key), names)} Valid keys: {', '.join(names)}.")
        else:
            tp, metadata = table[key]
            try:
                check_value(tp, value, key_path, metadata)
            except ConfigError as e:
                errors.append(e)
    return errors


# --------------------------------------------------------------------------------------------------------------
# Validating the whole tree, every error at once
# --------------------------------------------------------------------------------------------------------------


def parse_experiment(raw: dict) -> ExperimentConfig:
    """Parse and validate the whole tree: the experiment keys, the trainer/checkpoint sections, the data module
    and the system with all their parts. Nothing is built, and Lightning is not imported. Every problem found is
    reported in one :class:`ConfigError`."""
    errors: list[Any] = []
    cfg = None
    try:
        cfg = parse_config(ExperimentConfig, raw, "")
    except ConfigError as e:
        errors.append(e)
    for kind, type_key, slot in (("datamodule", "data_type", "data"), ("system", "system_type", "system")):
        name = raw.get(type_key)
        if not name:
            errors.append(f"{type_key}: missing (a registered {kind} type)")
            continue
        try:
            validate(kind, name, raw.get(slot), slot)
        except ConfigError as e:
            errors.append(e)
    if raw.get("system_type") == "fourdfy-system":
        from fourdfy.systems.branches import check_agreement

        errors += check_agreement(raw.get("system") or {}, raw.get("data") or {})
    errors += check_section(raw.get("trainer") or {}, TRAINER_ARGS, "trainer", TRAINER_SET_BY_FOURDFY)
    errors += check_section(raw.get("checkpoint") or {}, CHECKPOINT_ARGS, "checkpoint", CHECKPOINT_SET_BY_FOURDFY)
    if errors:
        raise ConfigError(*errors)
    assert cfg is not None
    return cfg


def load_config(paths: list[str], overrides: list[str] = (), n_gpus: int = 1) -> tuple[ExperimentConfig, dict]:
    """Load, merge, resolve and validate. Returns the parsed config and the resolved tree (for parsed.yaml)."""
    raw = load_raw_config(list(paths), list(overrides), n_gpus)
    cfg = parse_experiment(raw)
    # parsed.yaml stores the computed fields, so relaunching from it reuses the same trial folder
    for key in ("tag", "timestamp", "exp_dir", "trial_name", "trial_dir"):
        raw[key] = getattr(cfg, key)
    return cfg, raw


def dump_yaml(tree: Any, path: str | Path) -> None:
    """Write a plain tree as YAML (atomically)."""
    from fourdfy.utils.io import atomic_write_text

    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(tree)))
