"""`--set a.b.c=value` overrides on nested frozen dataclasses, with errors that name the key."""

from __future__ import annotations

import ast
import dataclasses
import types
import typing
from typing import Any


class ConfigError(ValueError):
    """A malformed config or override; the message names the offending key."""


def _coerce(value: str, current: Any, type_hint: Any, key: str) -> Any:
    origin = typing.get_origin(type_hint)
    if origin is typing.Literal:
        allowed = typing.get_args(type_hint)
        match = [a for a in allowed if str(a) == value]
        if not match:
            raise ConfigError(f"--set {key}={value}: not allowed; choose from {', '.join(map(str, allowed))}")
        return match[0]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(type_hint) if a is not type(None)]
        if value.lower() in ("none", "null"):
            return None
        return _coerce(value, current, args[0] if args else str, key)
    try:
        if type_hint is bool or isinstance(current, bool):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if type_hint is int or (isinstance(current, int) and not isinstance(current, bool)):
            return int(value)
        if type_hint is float or isinstance(current, float):
            return float(value)
        if type_hint is str or isinstance(current, str):
            return value
        if origin is tuple or isinstance(current, tuple):
            parsed = ast.literal_eval(value)
            return tuple(parsed) if isinstance(parsed, (list, tuple)) else (parsed,)
        return ast.literal_eval(value)
    except (ValueError, SyntaxError) as e:
        kind = getattr(type_hint, "__name__", type_hint)
        raise ConfigError(f"--set {key}={value}: cannot parse {value!r} as {kind}") from e


def apply_override(cfg: Any, key: str, value: str, full_key: str | None = None) -> Any:
    """Return a copy of `cfg` with the dotted field `key` set from the string `value`."""
    head, _, rest = key.partition(".")
    key = full_key or key
    if not dataclasses.is_dataclass(cfg):
        raise ConfigError(f"--set {key}: {type(cfg).__name__} has no fields")
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    if head not in fields:
        raise ConfigError(
            f"--set {key}: unknown field {head!r} in {type(cfg).__name__}; known: {', '.join(sorted(fields))}"
        )
    current = getattr(cfg, head)
    if rest:
        return dataclasses.replace(cfg, **{head: apply_override(current, rest, value, key)})
    hints = typing.get_type_hints(type(cfg))
    if dataclasses.is_dataclass(current):
        raise ConfigError(f"--set {key}: {head!r} is a section; set one of its fields, e.g. {key}.<field>=...")
    return dataclasses.replace(cfg, **{head: _coerce(value, current, hints.get(head, type(current)), key)})


def apply_overrides(cfg: Any, assignments: list[str]) -> Any:
    """Apply `key=value` strings in order. Setting a mesh axis to -1 releases the other axes that were -1 (they
    become 1): the axis named last takes the remaining devices."""
    for a in assignments:
        key, sep, value = a.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {a!r}")
        key, value = key.strip(), value.strip()
        try:
            cfg = apply_override(cfg, key, value)
        except ValueError as e:  # a config's own __post_init__ check
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"--set {key}={value}: {str(e).splitlines()[0]}") from None
        axis = key.removeprefix("mesh.")
        if axis != key and value == "-1" and hasattr(cfg, "mesh"):
            released = {a: 1 for a in ("data", "fsdp", "tensor") if a != axis and getattr(cfg.mesh, a) == -1}
            cfg = dataclasses.replace(cfg, mesh=dataclasses.replace(cfg.mesh, **released)) if released else cfg
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(base: Any, data: dict, prefix: str = "") -> Any:
    """Rebuild a config saved as JSON (a run's config.json) on top of `base`; unknown keys raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected an object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(base)}
    changes = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown config key {prefix + key!r}")
        current = getattr(base, key)
        if dataclasses.is_dataclass(current):
            changes[key] = config_from_dict(current, value, f"{prefix}{key}.")
        elif isinstance(current, tuple) and isinstance(value, list):
            changes[key] = tuple(value)
        else:
            changes[key] = value
    return dataclasses.replace(base, **changes)
