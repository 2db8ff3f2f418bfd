"""Small frozen-dataclass configs: load from YAML/JSON, override from the CLI, validate.

Every stage (world, features, model, training) keeps its settings in a frozen
dataclass whose ``__post_init__`` validates values and raises
:class:`ConfigError` naming the offending key.  This module holds the shared
machinery: building a (nested) dataclass from a mapping with unknown-key
detection, applying ``key.sub=value`` overrides, and dumping back to plain
JSON-able dicts.
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from audiopg.core.errors import ConfigError
from audiopg.core.io import atomic_write_text

T = TypeVar("T")




# ----------------------------------------------------------------------------- validation helpers
def check_range(key: str, value: Any, low: float | None = None, high: float | None = None) -> None:
    """Raise unless ``low <= value <= high`` (either bound may be None)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(key, f"expected a number, got {value!r}")
    if value != value:  # NaN
        raise ConfigError(key, "expected a number, got NaN")
    if low is not None and value < low:
        raise ConfigError(key, f"must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ConfigError(key, f"must be <= {high}, got {value}")


def check_interval(key: str, pair: Any, low: float | None = None, high: float | None = None) -> None:
    """Raise unless ``pair`` is ``(a, b)`` with ``low <= a <= b <= high``."""
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ConfigError(key, f"expected a [min, max] pair, got {pair!r}")
    a, b = pair
    check_range(f"{key}[0]", a, low, high)
    check_range(f"{key}[1]", b, low, high)
    if a > b:
        raise ConfigError(key, f"min {a} is above max {b}")


def check_probability(key: str, value: Any) -> None:
    check_range(key, value, 0.0, 1.0)


# ----------------------------------------------------------------------------- (de)serialisation
def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Convert a plain JSON/YAML value to the annotated field type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if _is_dataclass_type(tp):
        if isinstance(tp, type) and isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _coerce(key, non_none[0], value)
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{key}[{i}]", args[0], v) for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(key, f"expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(f"{key}[{i}]", a, v) for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a mapping, got {value!r}")
        return {k: _coerce(f"{key}.{k}", args[1] if args else Any, v) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise ConfigError naming them."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = prefix or cls.__name__
        raise ConfigError(
            f"{prefix + '.' if prefix else ''}{unknown[0]}",
            f"unknown key in {where} (known keys: {', '.join(sorted(fields))})",
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(key, hints[name], value)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        if prefix and not err.key.startswith(prefix):
            raise ConfigError(f"{prefix}.{err.key}", str(err).split(": ", 1)[1]) from None
        raise


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict of JSON-able values (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def read_mapping(path: str | os.PathLike) -> dict:
    """Read a YAML or JSON file that must hold a mapping."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(str(path), f"cannot read config file ({err.strerror})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(str(path), f"not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), f"expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=1.5"`` -> (["a", "b"], 1.5); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(text, "override must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(text, "override has an empty key")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string; a number is meant
        try:
            value = float(value)
        except ValueError:
            pass
    return key.split("."), value


def merge_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Return a deep copy of ``data`` with ``key.sub=value`` overrides applied."""
    data = json.loads(json.dumps(data))
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(".".join(path[: i + 1]), "is a value, not a section; cannot override a sub-key")
            node = child
        node[path[-1]] = value
    return data


def deep_update(base: dict, update: Mapping) -> dict:
    """Recursively merge ``update`` into a copy of ``base``."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = v
    return out


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(to_dict(obj), indent=2, sort_keys=False) + "\n")
