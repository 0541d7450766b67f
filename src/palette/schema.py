"""Frozen dataclasses built from plain mappings (parsed YAML), every key and value checked against its annotation.

    build_dataclass(TrainConfig, {"steps": 100}, "train")  # TrainConfig(steps=100, ...)

An unknown key or a value of the wrong type raises ConfigError, naming the key and what it expects.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal


class ConfigError(ValueError):
    """A config file or override that names an unknown key or holds an invalid value."""


def _check_value(key: str, value: Any, annotation: Any) -> Any:
    """Coerce `value` to `annotation` or raise ConfigError naming `key`."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{key}: invalid value {value!r}; expected one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        return _check_value(key, value, next(a for a in options if a is not type(None)))
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_value(key, item, args[0]) for item in value)
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(_check_value(key, item, arg) for item, arg in zip(value, args))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        key_type, value_type = typing.get_args(annotation)
        return {_check_value(key, k, key_type): _check_value(f"{key}.{k}", v, value_type) for k, v in value.items()}
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{key}: unsupported annotation {annotation}")


def build_dataclass(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Build dataclass `cls` from a mapping, checking every key and value."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        where = f" in section '{prefix}'" if prefix else ""
        raise ConfigError(f"unknown config key{where}: {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = build_dataclass(hints[name], value, key)
        else:
            kwargs[name] = _check_value(key, value, hints[name])
    return cls(**kwargs)
