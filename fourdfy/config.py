"""Strict configuration parsing.

Configs are written in YAML and merged with command-line ``key=value`` overrides by OmegaConf (interpolations,
bracket keys such as ``system.optimizer.params[geometry.encoding].lr``). OmegaConf is only the *loader*: the
resolved tree is then checked against the nested ``Config`` dataclasses by :func:`parse_config`, which fails on
an unknown key (with a close match), a value of the wrong type, a missing value, a value outside a field's
``choices`` (:func:`choice`) or range (:func:`ranged`), always naming the dotted key. Every problem found is
reported, not only the first: one :class:`ConfigError` carries them all, one message per line.

Loading files (``extends:``, ``_replace_``), the experiment schema and trial folders live in
:mod:`fourdfy.experiment`.
"""

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Optional, TypeVar, Union

T = TypeVar("T")

MISSING_MARK = "???"


class ConfigError(ValueError):
    """A configuration value is unknown, mistyped, missing or invalid. Each message names the dotted key.

    One error may carry several messages (``errors``): the parser collects every problem of a config so that one
    launch reports them all, one per line. Messages (or other ConfigErrors, whose messages are taken over) are
    passed positionally: ``ConfigError("a: bad", "b: bad")``.
    """

    def __init__(self, *messages: Any) -> None:
        errors: list[str] = []
        for m in messages:
            errors.extend(m.errors if isinstance(m, ConfigError) else [str(m)])
        self.errors = errors
        super().__init__(*errors)

    def __str__(self) -> str:
        if len(self.errors) == 1:
            return self.errors[0]
        return f"{len(self.errors)} errors in the config:\n" + "\n".join(f"  {e}" for e in self.errors)


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest candidate, or an empty string."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" Did you mean '{match[0]}'?" if match else ""


def join_path(path: str, key: Union[str, int]) -> str:
    """Join a dotted config path and a key; keys containing dots are written in brackets (OmegaConf syntax)."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if "." in key:
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


# --------------------------------------------------------------------------------------------------------------
# Scheduled values: a scalar or [start_step, start_value, end_value, end_step] (4D-fy's C()).
# --------------------------------------------------------------------------------------------------------------

SCHEDULED = "fourdfy.scheduled"
Scheduled = typing.Annotated[Any, SCHEDULED]
"""Annotation for a value that may change with the training step (see :func:`fourdfy.schedule.scheduled_value`)."""


def _check_scheduled(value: Any, path: str) -> Any:
    if isinstance(value, bool):
        raise ConfigError(f"{path}: expected a number or [start_step, start_value, end_value, end_step], got {value!r}")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, (list, tuple)) and len(value) in (3, 4):
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return list(value)
    raise ConfigError(
        f"{path}: expected a number or a list [start_step, start_value, end_value, end_step] "
        f"(a 3-list gets start_step 0), got {value!r}"
    )


# --------------------------------------------------------------------------------------------------------------
# Child slots: `geometry_type: implicit-volume` + `geometry: {...}` validated later by the child's own Config.
# --------------------------------------------------------------------------------------------------------------


def child_slot(kind: str, type_field: str, optional: bool = False) -> Any:
    """A ``dict`` field whose content is parsed by the ``Config`` of the class named in ``type_field``.

    Args:
        kind: the registry kind the named class must have (``"geometry"``, ``"guidance"``, ...).
        type_field: the sibling field holding the registered type name.
        optional: if true, an empty type name means "no such part" and the slot must then be empty.
    """
    return dataclasses.field(
        default_factory=dict, metadata={"child_kind": kind, "type_field": type_field, "optional": optional}
    )


def child_slots(cfg_cls: type) -> list[tuple[str, str, str, bool]]:
    """List ``(slot_field, type_field, kind, optional)`` for every child slot of a Config dataclass."""
    out = []
    for f in dataclasses.fields(cfg_cls):
        if "child_kind" in f.metadata:
            out.append((f.name, f.metadata["type_field"], f.metadata["child_kind"], f.metadata["optional"]))
    return out


def choice(default: Any, choices: tuple, doc: str = "") -> Any:
    """A field restricted to ``choices`` (checked by :func:`parse_config`)."""
    return dataclasses.field(default=default, metadata={"choices": tuple(choices), "doc": doc})


def ranged(
    default: Any = dataclasses.MISSING,
    *,
    ge: Optional[float | int] = None,
    gt: Optional[float | int] = None,
    le: Optional[float | int] = None,
    lt: Optional[float | int] = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A numeric field whose value must lie in a range (checked by :func:`parse_config`).

    ``ge``/``gt``/``le``/``lt`` are the bounds (>=, >, <=, <). For a list value (e.g. one value per resolution
    phase) every number of the list is checked; ``None`` passes. Example: ``batch_size: int = ranged(1, ge=1)``.
    """
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"range": bounds})


_BOUND_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_BOUND_OK = {
    "ge": lambda v, b: v >= b,
    "gt": lambda v, b: v > b,
    "le": lambda v, b: v <= b,
    "lt": lambda v, b: v < b,
}


def _numbers(value: Any) -> list:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _numbers(v)]
    return []


def check_range(value: Any, bounds: Mapping[str, Any], path: str) -> None:
    """Raise :class:`ConfigError` ``"<path>: must be >= 1, got 0"`` when a number of ``value`` is out of bounds."""
    if not bounds:
        return
    for v in _numbers(value):
        if not all(_BOUND_OK[k](v, b) for k, b in bounds.items()):
            rule = " and ".join(f"{_BOUND_TEXT[k]} {b}" for k, b in bounds.items())
            where = "" if v is value else f" (in {value!r})"
            raise ConfigError(f"{path}: must be {rule}, got {v!r}{where}")


def check_value(tp: Any, value: Any, path: str, metadata: Optional[Mapping[str, Any]] = None) -> Any:
    """Parse one value against annotation ``tp`` and the ``choices``/``range`` of a field's ``metadata``."""
    value = _parse_value(tp, value, path)
    metadata = metadata or {}
    choices = metadata.get("choices")
    if choices is not None and value not in choices:
        close = did_you_mean(str(value), map(str, choices))
        raise ConfigError(f"{path}: {value!r} is not one of {list(choices)}.{close}")
    check_range(value, metadata.get("range") or {}, path)
    return value


# --------------------------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _parse_value(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against annotation ``tp`` and return the parsed value."""
    if isinstance(value, str) and value == MISSING_MARK:
        raise ConfigError(f"{path}: missing mandatory value ('???'). Set it, e.g. on the command line: {path}=...")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if origin is typing.Annotated:
        if SCHEDULED in args[1:]:
            return _check_scheduled(value, path)
        return _parse_value(args[0], value, path)
    if tp is Any or tp is object:
        return value
    if origin is typing.Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise ConfigError(f"{path}: {value!r} is not one of {list(args)}.{did_you_mean(str(value), map(str, args))}")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for sub in args:
            if sub is type(None):
                continue
            try:
                return _parse_value(sub, value, path)
            except ConfigError as e:
                errors.append(str(e))
        expected = " or ".join(_type_name(a) for a in args)
        raise ConfigError(f"{path}: expected {expected}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if value is None:
            value = {}
        return parse_config(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected a bool (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected an int, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{path}: expected an int, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    if tp is dict or origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        if args:
            return dict(zip(value, _parse_all([(args[1], v, join_path(path, k)) for k, v in value.items()])))
        return dict(value)
    if tp is list or origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if args:
            return _parse_all([(args[0], v, join_path(path, i)) for i, v in enumerate(value)])
        return list(value)
    if tp is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if args and args[-1] is Ellipsis:
            return tuple(_parse_all([(args[0], v, join_path(path, i)) for i, v in enumerate(value)]))
        if args:
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected a list of {len(args)} values, got {value!r}")
            return tuple(_parse_all([(a, v, join_path(path, i)) for i, (a, v) in enumerate(zip(args, value))]))
        return tuple(value)
    raise TypeError(f"{path}: unsupported annotation {tp!r} in a Config dataclass")


def _parse_all(items: list[tuple[Any, Any, str]]) -> list:
    """Parse ``(annotation, value, path)`` items; if some fail, raise one error holding all their messages."""
    out, errors = [], []
    for tp, value, path in items:
        try:
            out.append(_parse_value(tp, value, path))
        except ConfigError as e:
            errors.append(e)
    if errors:
        raise ConfigError(*errors)
    return out


def parse_config(cls: type[T], data: Any, path: str = "") -> T:
    """Validate ``data`` against the dataclass ``cls`` and build an instance.

    Unknown keys, values of the wrong type, missing values (no default, or OmegaConf's ``???``) and values
    outside a field's ``choices`` or range (:func:`ranged`) raise :class:`ConfigError` naming the dotted key
    (``path`` is the prefix), with a close match for typos. All such problems of the section, nested sections
    included, are collected into one error. ``__post_init__`` runs only when the fields are valid; its errors are
    re-raised with the path.

    Args:
        cls: a dataclass (typically a module's nested ``Config``).
        data: the raw mapping (resolved YAML); ``None`` means "all defaults".
        path: dotted location of ``data`` in the whole config, used in messages.

    Returns:
        An instance of ``cls``.
    """
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data):
        data = dataclasses.asdict(data)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or '<root>'}: expected a mapping of keys for {cls.__qualname__}, got {data!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    errors: list[Any] = []
    for key in data:
        if key not in fields:
            errors.append(
                f"{join_path(path, str(key))}: unknown key for {cls.__qualname__}.{did_you_mean(str(key), fields)}"
                f" Valid keys: {', '.join(sorted(fields))}."
            )
    kwargs = {}
    for name, f in fields.items():
        key_path = join_path(path, name)
        if name in data:
            try:
                kwargs[name] = check_value(hints[name], data[name], key_path, f.metadata)
            except ConfigError as e:
                errors.append(e)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            errors.append(f"{key_path}: missing value (no default). Set it in the config or as {key_path}=...")
    if errors:
        raise ConfigError(*errors)  # every problem of this section (and of nested sections) at once
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(*[_prefix_message(path, m) for m in e.errors]) from None
    except (ValueError, TypeError) as e:
        raise ConfigError(_prefix_message(path, str(e))) from None


_KEY_PREFIX = re.compile(r"^([A-Za-z_][\w\-]*(?:(?:\.[A-Za-z_][\w\-]*)|(?:\[[^\]]+\]))*): (.*)$", re.S)


def _prefix_message(path: str, message: str) -> str:
    """Prefix a validation message with the config path; a message starting with ``key: ...`` becomes
    ``path.key: ...`` so the dotted key stays whole."""
    m = _KEY_PREFIX.match(message)
    if m and path:
        return f"{path}.{m.group(1)}: {m.group(2)}"
    if m:
        return message
    return f"{path or '<root>'}: {message}"


def config_to_dict(cfg: Any) -> Any:
    """Turn a parsed Config dataclass (or nested containers of them) back into plain dicts/lists."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, Mapping):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    return cfg
