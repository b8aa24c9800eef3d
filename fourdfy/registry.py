"""The registry of module types, addressed by 4D-fy's kebab-case names.

Every registered class declares its ``kind`` (``"geometry"``, ``"renderer"``, ``"guidance"``, ...). A config
names a class with a ``*_type`` key; :func:`find` checks that the class exists *and* is of the kind the slot
expects, so a geometry name in a renderer slot fails at start-up with a message naming the key.
"""

from collections.abc import Callable
from typing import Any, TypeVar

from fourdfy.config import ConfigError, did_you_mean, parse_config

C = TypeVar("C", bound=type)

_registry: dict[str, type] = {}


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
    """All registered names, optionally only those of one kind."""
    import fourdfy.catalog  # noqa: F401  (registers the built-in modules)

    return sorted(n for n, c in _registry.items() if kind is None or c.kind == kind)


def find(name: str, kind: str, path: str) -> type:
    """Look up a registered class by name and check its kind.

    Args:
        name: the registered type name (e.g. ``"implicit-volume"``).
        kind: the kind the config slot expects.
        path: dotted config key holding ``name`` (used in error messages).

    Raises:
        ConfigError: unknown name (with the closest match and the valid names of that kind) or wrong kind.
    """
    import fourdfy.catalog  # noqa: F401  (registers the built-in modules)

    if name not in _registry:
        names = registered_names(kind)
        raise ConfigError(
            f"{path}: unknown {kind} type {name!r}.{did_you_mean(name, names)} Registered {kind} types: {', '.join(names)}."
        )
    cls = _registry[name]
    if cls.kind != kind:
        raise ConfigError(f"{path}: {name!r} is a {cls.kind}, but this slot needs a {kind}.")
    return cls


def build(kind: str, name: str, raw_cfg: Any, path: str, *args: Any, **kwargs: Any) -> Any:
    """Find the class, parse its config slice strictly and construct it with ``(cfg, *args, path=path, **kwargs)``
    (every part receives its dotted config path, for error messages)."""
    cls = find(name, kind, path)
    cfg = parse_config(cls.Config, raw_cfg, path)
    return cls(cfg, *args, path=path, **kwargs)


def validate(kind: str, name: str, raw_cfg: Any, path: str) -> Any:
    """Parse a config slice and, recursively, every child slot it names, without building anything.

    This is what makes a typo anywhere in the tree fail before the first (possibly multi-GB) model is loaded.

    Returns:
        The parsed Config instance of the top class.
    """
    from fourdfy.config import child_slots

    cls = find(name, kind, path)
    cfg = parse_config(cls.Config, raw_cfg, path)
    for slot, type_field, child_kind, optional in child_slots(type(cfg)):
        child_name = getattr(cfg, type_field)
        child_raw = getattr(cfg, slot)
        slot_path = f"{path}.{slot}" if path else slot
        if not child_name:
            if optional:
                continue
            raise ConfigError(f"{path}.{type_field}: missing type name for `{slot}` (a registered {child_kind} type).")
        validate(child_kind, child_name, child_raw, slot_path)
    return cfg
