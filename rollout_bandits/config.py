"""Config dataclasses <-> command-line flags and JSON/TOML files.

Nested dataclasses become dotted flags (`--policy.hidden 64`); a config file
gives the same tree as a dict; flags override the file. Every value passes
through the dataclass constructors, so their own validation names the field.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: JSON config files only
    tomllib = None

UNSET = object()


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _scalar_type(tp) -> tuple[type, bool]:
    """(base type, optional?) of an annotation like `int | None`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean (true/false), found {text!r}")


def _convert(text: str, tp, flag: str):
    base, optional = _scalar_type(tp)
    if optional and text.strip().lower() in ("none", "null", ""):
        return None
    try:
        if base is bool:
            return _parse_bool(text)
        if base in (int, float, str):
            return base(text)
        if typing.get_origin(base) is tuple:
            return tuple(x.strip() for x in text.split(",") if x.strip())
    except ValueError as err:
        raise ValueError(f"--{flag}: {err}") from None
    raise ValueError(f"--{flag}: unsupported field type {tp}")


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, prefix: str = "") -> None:
    """One flag per leaf field; defaults stay unset so a config file can fill them."""
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            add_dataclass_flags(parser, tp, prefix=f"{name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        parser.add_argument(f"--{name}", dest=name, default=UNSET, metavar=_scalar_type(tp)[0].__name__.upper()
                            if isinstance(_scalar_type(tp)[0], type) else "VALUE",
                            help=f"(default: {default})")


def load_config_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise ValueError(f"--config: {path!r} does not exist")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        if path.endswith(".toml"):
            if tomllib is None:
                raise ValueError("--config: TOML files need Python >= 3.11; use JSON")
            return tomllib.loads(raw.decode())
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"--config: {path!r} is not valid {'TOML' if path.endswith('.toml') else 'JSON'}: {err}") \
            from None


def build_dataclass(cls, values: dict, path: str = ""):
    """cls(**values) recursively; unknown keys are an error naming them."""
    if not isinstance(values, dict):
        raise ValueError(f"config {path or 'root'}: found {type(values).__name__}, expected a table/object")
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"config {path or 'root'}: unknown field(s) {unknown}, expected some of {sorted(names)}")
    kwargs = {}
    for name, value in values.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build_dataclass(tp, value, f"{path}{name}.")
        else:
            base, _ = _scalar_type(tp)
            if typing.get_origin(base) is tuple and isinstance(value, list):
                value = tuple(value)
            kwargs[name] = value
    return cls(**kwargs)


def config_from_args(cls, args: argparse.Namespace, file_values: dict | None = None):
    """Merge file values and explicitly given flags (flags win) into a validated config."""
    tree: dict = json.loads(json.dumps(file_values or {}))
    hints_cache: dict = {}

    def leaf_type(dotted: str):
        cur = cls
        for part in dotted.split(".")[:-1]:
            cur = hints_cache.setdefault(cur, _field_types(cur))[part]
        return hints_cache.setdefault(cur, _field_types(cur))[dotted.split(".")[-1]]

    for key, value in vars(args).items():
        if value is UNSET or "." not in key and key not in {f.name for f in dataclasses.fields(cls)}:
            continue
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _convert(value, leaf_type(key), key) if isinstance(value, str) else value
    return build_dataclass(cls, tree)


def to_dict(config) -> dict:
    return dataclasses.asdict(config)
