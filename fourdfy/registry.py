"""The registry of module types, addressed by 4D-fy's kebab-case names.

Every registered class declares its ``kind`` (``"geometry"``, ``"renderer"``, ``"guidance"``, ...). A config
names a class with a ``*_type`` key; :func:`find` checks that the class exists *and* is of the kind the slot
expects, so a geometry name in a renderer slot fails at start-up with a message naming the key.

Two ways in:

* :func:`register`, a class decorator, when the class's module is imported;
* :func:`declare`, a *lazy* entry: name, kind, where the class lives and (optionally) where its ``Config`` lives.
  The built-ins are declared by :mod:`fourdfy.catalog` (plain data, imported by ``fourdfy/__init__``), so looking
  up or validating a name imports only the module it needs, and checking a config never imports the heavy ones
  (Lightning, diffusers, transformers). The registry itself imports no module of the framework above it.
"""

import importlib
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Optional, TypeVar

from fourdfy import compat
from fourdfy.config import ConfigError, child_slots, did_you_mean, join_path, parse_config

C = TypeVar("C", bound=type)

_registry: dict[str, type] = {}


class Declared(NamedTuple):
    """A lazily imported built-in: ``target`` and ``config`` are ``"module:attribute"``."""

    kind: str
    target: str
    config: Optional[str] = None


_declared: dict[str, Declared] = {}


def declare(name: str, kind: str, target: str, config: Optional[str] = None) -> None:
    """Declare ``name`` as the class ``target`` (``"module:Class"``) of ``kind``, imported on first use;
    ``config`` (``"module:ConfigClass"``) is where its ``Config`` can be read without importing ``target``."""
    _declared[name] = Declared(kind, target, config)


def _load(location: str) -> Any:
    module, attribute = location.split(":")
    return getattr(importlib.import_module(module), attribute)


def register(name: str) -> Callable[[C], C]:
    """Class decorator: register ``cls`` under ``name``. Names are unique; the class must declare ``kind``."""

    def deco(cls: C) -> C:
        if name in _registry and _registry[name] is not cls:
            raise ValueError(f"registry name {name!r} is already taken by {_registry[name].__qualname__}")
        if not getattr(cls, "kind", None):
            raise TypeError(f"{cls.__qualname__} must declare a class attribute `kind` to be registered")
        if not hasattr(cls, "Config"):
            raise TypeError(f"{cls.__qualname__} must declare a nested `Config` dataclass to be registered")
        _registry[name] = cls
        cls.registry_name = name
        return cls

    return deco


def registered_names(kind: str | None = None) -> list[str]:
    """All registered and declared names, optionally only those of one kind."""
    kinds = {n: c.kind for n, c in _registry.items()} | {n: d.kind for n, d in _declared.items()}
    return sorted(n for n, k in kinds.items() if kind is None or k == kind)


def _check_name(name: str, kind: str, path: str) -> None:
    if name not in _registry and name not in _declared:
        names = registered_names(kind)
        raise ConfigError(
            f"{path}: unknown {kind} type {name!r}.{did_you_mean(name, names)} Registered {kind} types: {', '.join(names)}."
        )
    actual = _registry[name].kind if name in _registry else _declared[name].kind
    if actual != kind:
        raise ConfigError(f"{path}: {name!r} is a {actual}, but this slot needs a {kind}.")


def find(name: str, kind: str, path: str) -> type:
    """Look up a registered class by name and check its kind (importing its module if it is only declared).

    Args:
        name: the registered type name (e.g. ``"implicit-volume"``).
        kind: the kind the config slot expects.
        path: dotted config key holding ``name`` (used in error messages).

    Raises:
        ConfigError: unknown name (with the closest match and the valid names of that kind) or wrong kind.
    """
    _check_name(name, kind, path)
    if name not in _registry:
        cls = _load(_declared[name].target)
        if _registry.get(name) is not cls:
            raise TypeError(f"{_declared[name].target} is declared as {name!r} but does not register under that name")
    return _registry[name]


def find_config(name: str, kind: str, path: str) -> type:
    """The ``Config`` class of a type, importing only the module that holds it (see :func:`declare`)."""
    _check_name(name, kind, path)
    if name in _registry:
        return _registry[name].Config
    declared = _declared[name]
    return _load(declared.config) if declared.config else find(name, kind, path).Config


def build(kind: str, name: str, raw_cfg: Any, path: str, *args: Any, **kwargs: Any) -> Any:
    """Find the class, parse its config slice strictly and construct it with ``(cfg, *args, path=path, **kwargs)``
    (every part receives its dotted config path, for error messages)."""
    cls = find(name, kind, path)
    cfg = parse_config(cls.Config, compat.strip(name, raw_cfg, path), path)
    return cls(cfg, *args, path=path, **kwargs)


def validate(kind: str, name: Any, raw_cfg: Any, path: str) -> Any:
    """Parse a config slice and, recursively, every child slot it names, without building anything, and raise one
    :class:`ConfigError` with every problem found (a child slot is still checked when its parent has errors
    elsewhere, so three typos in three modules give three messages).

    This is what makes a typo anywhere in the tree fail before the first (possibly multi-GB) model is loaded; only
    the modules holding the ``Config`` classes are imported (:func:`find_config`), and 4D-fy-only keys are checked
    and removed first (:mod:`fourdfy.compat`).

    Returns:
        The parsed Config instance of the top class.
    """
    if not isinstance(name, str):
        raise ConfigError(f"{path}: the type name must be a string, got {name!r}")
    config_cls = find_config(name, kind, path)
    errors: list[Any] = []
    cfg = None
    try:
        raw_cfg = compat.strip(name, raw_cfg, path)
        cfg = parse_config(config_cls, raw_cfg, path)
    except ConfigError as e:
        errors.append(e)
        # the children are still checked, with the config parsed without the faulty keys (its __post_init__ may
        # fill the children in, e.g. copy the prompt); if even that fails, they are not checked
        cfg = _parse_without(config_cls, raw_cfg, path, e.errors)
    for slot, type_field, child_kind, optional in child_slots(config_cls):
        if cfg is None:
            break
        child_name, child_raw = getattr(cfg, type_field), getattr(cfg, slot)
        if not child_name:
            if not optional:
                errors.append(
                    f"{join_path(path, type_field)}: missing type name for `{slot}` (a registered {child_kind} type)."
                )
            continue
        try:
            validate(child_kind, child_name, child_raw, join_path(path, slot))
        except ConfigError as e:
            errors.append(e)
    if errors:
        raise ConfigError(*errors)
    return cfg


def _parse_without(cls: type, raw: Any, path: str, messages: list[str]) -> Any:
    """``cls`` parsed from ``raw`` minus the keys the ``messages`` name, or None."""
    if not isinstance(raw, Mapping):
        return None
    prefix = f"{path}." if path else ""
    bad = set()
    for m in messages:
        key = m.split(": ", 1)[0]
        if key.startswith(prefix):
            bad.add(re.split(r"[.\[]", key[len(prefix):], maxsplit=1)[0])
    try:
        return parse_config(cls, {k: v for k, v in raw.items() if k not in bad}, path)
    except ConfigError:
        return None
