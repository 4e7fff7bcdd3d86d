"""Config dataclasses <-> command-line flags and JSON/TOML files.

One flag style for every command: a field `out_dir` is `--out-dir`, a nested
field is dotted (`--scheduler.learner.gamma`), a bool is a plain switch
(`--overwrite` / `--no-overwrite`), a tuple is comma-separated (`--tasks
add,mul`) and a field without a default is a positional argument. A config
file gives the same tree as a table (field names as in Python); flags override
it. Every value is type-checked against its annotation here and then passes
through the dataclass constructors, whose own checks name the field, so a
wrong value is a `ValueError` before anything touches the disk.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import types
import typing
from typing import Any

from rollout_bandits.validation import check_type, describe, fail

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: JSON config files only
    tomllib = None


def _optional_base(tp) -> tuple[Any, bool]:
    """(base type, optional?) of an annotation like `int | None`."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _is_tuple(tp) -> bool:
    return typing.get_origin(_optional_base(tp)[0]) is tuple


def _from_text(text: str, tp, owner: str, name: str, flag: str):
    """A flag's text as a value of the field's type (the type check after it names the flag)."""
    base, optional = _optional_base(tp)
    if optional and text.strip().lower() in ("none", "null"):
        return None
    try:
        if base is int:
            return int(text)
        if base is float:
            return float(text)
        if _is_tuple(base):
            inner = typing.get_args(base)[0]
            return tuple(_from_text(x.strip(), inner, owner, name, flag) for x in text.split(",") if x.strip())
    except ValueError:
        pass
    return check_type(owner, name, text, tp, found=f"{text!r} (from {flag})")


def opt(default, help: str):
    """A dataclass field with its flag's help text."""
    return dataclasses.field(default=default, metadata={"help": help})


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, prefix: str = "") -> None:
    """One flag per leaf field of `cls`; a flag not given is absent from the parsed namespace, so a
    config file (or a stored run's config) can fill it."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, name = hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            add_dataclass_flags(parser, tp, prefix=f"{name}.")
            continue
        help_text = f.metadata.get("help", "")
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            parser.add_argument(name, metavar=f.name.upper(), help=help_text)
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = "--" + name.replace("_", "-")
        if tp is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=f"{help_text} (default: {'on' if default else 'off'})".strip())
        else:
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            suffix = "" if default is None and help_text else f" (default: {shown})"
            parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar=_metavar(tp),
                                help=f"{help_text}{suffix}".strip())


def _metavar(tp) -> str:
    base, _ = _optional_base(tp)
    if _is_tuple(base):
        return f"{_metavar(typing.get_args(base)[0])},..."
    return base.__name__.upper() if isinstance(base, type) else "VALUE"


def given_values(cls, args: argparse.Namespace) -> dict:
    """The fields of `cls` given on the command line, as a nested dict of typed values."""
    tree: dict = {}
    for key, value in vars(args).items():
        owner, tp = cls, None
        for part in key.split("."):
            hints = typing.get_type_hints(owner) if dataclasses.is_dataclass(owner) else {}
            if part not in hints:
                tp = None
                break
            tp, owner = hints[part], (hints[part] if dataclasses.is_dataclass(hints[part]) else owner)
        if tp is None or dataclasses.is_dataclass(tp):
            continue  # not a field of cls (the command's own options)
        if isinstance(value, str) and tp is not str:
            value = _from_text(value, tp, owner.__name__, key.rsplit(".", 1)[-1], "--" + key.replace("_", "-"))
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def merge(dst: dict, src: dict) -> dict:
    """Deep-merge `src` into `dst` (tables merge, other values replace); returns `dst`."""
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)
    return dst


def build_dataclass(cls, values, path: str = ""):
    """`cls(**values)` recursively, every leaf type-checked first; an unknown key names itself."""
    owner = cls.__name__
    if not isinstance(values, dict):
        fail("config", path.rstrip(".") or "(root)", describe(values), f"a table of {owner} fields")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for name, value in values.items():
        if name not in names:
            shown = name if name.isidentifier() else repr(name)
            fail(owner, shown, "a field it does not have", "one of " + ", ".join(names))
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build_dataclass(tp, value, f"{path}{name}.")
            continue
        if isinstance(value, list) and _is_tuple(tp):
            value = tuple(value)
        kwargs[name] = check_type(owner, name, value, tp)
    return cls(**kwargs)


def options_from_args(cls, args: argparse.Namespace, file_values: dict | None = None):
    """Config file values, then the flags given (flags win), as a validated `cls`."""
    return build_dataclass(cls, merge(copy.deepcopy(file_values or {}), given_values(cls, args)))


def changed_fields(old: dict, new: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted name, old, new) for every leaf that differs between two config dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_fields(a, b, f"{prefix}{key}.")
        elif a != b and not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)):
            out.append((f"{prefix}{key}", a, b))
    return out


def load_config_file(path: str) -> dict:
    """A JSON or TOML file (by extension: .toml is TOML, anything else JSON) as a table."""
    kind = "TOML" if path.endswith(".toml") else "JSON"
    if os.path.isdir(path):
        fail("config", "file", f"{path!r}, a directory", f"a {kind} file")
    if not os.path.isfile(path):
        fail("config", "file", f"{path!r}, which does not exist", f"a {kind} file")
    if kind == "TOML" and tomllib is None:
        fail("config", "file", f"{path!r}, a TOML file", "a JSON file (TOML needs Python >= 3.11)")
    try:
        with open(path, "rb") as f:
            text = f.read().decode()
        values = tomllib.loads(text) if kind == "TOML" else json.loads(text)
    except (OSError, ValueError, RecursionError) as err:  # JSON/TOML decode errors are ValueErrors
        fail("config", "file", f"{path!r}, which is not valid {kind} ({err})", f"a {kind} file")
    if not isinstance(values, dict):
        fail("config", "file", f"{path!r}, which holds {describe(values)}", f"a {kind} table of config fields")
    return values
