"""One way to check inputs and to say what is wrong.

Every bad input in the package is a `ValueError` worded the same way:

    Owner.field: found <what was found>, expected <what was expected>

Configs (one dataclass per component) call `check_field_types` first, so a
value of the wrong type (the string "false" for a bool, 5 for a path) is
rejected before any range check, and before anything touches the disk; then
they check ranges with the `check_*` helpers below. Tensors are checked with
`check_tensor`. The compute backend of every kernel is chosen by
`resolve_backend` (`use_triton` for a yes/no), the one selector.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any, NoReturn

import torch

# auto: Triton on CUDA tensors, the fast CPU path on CPU tensors, the PyTorch reference elsewhere.
# triton: the Triton kernels (the interpreter under TRITON_INTERPRET=1). reference: the vectorized
# PyTorch formulation on any device (what torch.compile traces). cpu: the fastest CPU implementation
# (numpy reductions for rollout_features, the PyTorch reference for the other kernels).
BACKENDS = ("auto", "triton", "reference", "cpu")

# Largest |value| a RolloutBatch may hold (see `RolloutBatch._check_magnitudes`): the contexts are
# float32 and the scorer squares them (the exploration bonus is a quadratic form), so a value
# within a few orders of sqrt(float32 max) ~ 1.8e19 surfaces later as an inf or NaN score.
MAX_MAGNITUDE = 1e15


def fail(owner: str, field: str, found: str, expected: str) -> NoReturn:
    raise ValueError(f"{owner}.{field}: found {found}, expected {expected}")


def shape_str(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def describe(value: Any) -> str:
    """A short description of a found value: repr for scalars, shape/dtype for tensors."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {shape_str(value)} and dtype {value.dtype}"
    if isinstance(value, (bool, int, float, str, type(None))):
        return repr(value)
    return f"a {type(value).__name__}"


# ------------------------------------------------------------------- scalars
def check_bool(owner: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        fail(owner, name, describe(value), "a bool (true or false)")
    return value


def check_int(owner: str, name: str, value, lo: int | None = 0, hi: int | None = None, *,
              allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok:
        ok = (lo is None or value >= lo) and (hi is None or value <= hi)
    if not ok:
        rng = ("" if lo is None else f" >= {lo}") + ("" if hi is None else f" and <= {hi}")
        fail(owner, name, describe(value), f"an int{rng}" + (" or None" if allow_none else ""))
    return value


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def check_float(owner: str, name: str, value, lo: float = 0.0, hi: float = math.inf, *,
                lo_open: bool = False, hi_open: bool = False, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        lb, hb = ("(" if lo_open else "["), (")" if hi_open else "]")
        fail(owner, name, describe(value),
             f"a finite number in {lb}{lo}, {hi}{hb}" + (" or None" if allow_none else ""))
    return float(value)


def check_choice(owner: str, name: str, value, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        fail(owner, name, describe(value), " | ".join(choices))
    return value


def check_str(owner: str, name: str, value, *, allow_empty: bool = False, allow_none: bool = False) -> str | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        fail(owner, name, describe(value), "a non-empty string" + (" or None" if allow_none else ""))
    return value


# ------------------------------------------------------------ config fields
def _annotation_ok(value, tp) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_annotation_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_annotation_ok(v, args[0]) for v in value)
        return len(args) == len(value) and all(_annotation_ok(v, a) for v, a in zip(value, args))
    if dataclasses.is_dataclass(tp):
        return isinstance(value, tp)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _annotation_text(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_annotation_text(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "None"
    if origin is tuple:
        args = typing.get_args(tp)
        inner = _annotation_text(args[0]) if args else "values"
        return f"a list of {inner}"
    if tp is bool:
        return "a bool (true or false)"
    if tp is int:
        return "an int"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if isinstance(tp, type):
        return f"a {tp.__name__}"
    return str(tp)


def check_type(owner: str, name: str, value, tp, *, found: str | None = None):
    """One value against a type annotation (what `check_field_types` does per field); `found`
    overrides how the value is described (e.g. the text of a command-line flag)."""
    if not _annotation_ok(value, tp):
        fail(owner, name, found or describe(value), _annotation_text(tp))
    return value


def check_field_types(obj) -> None:
    """Every field of a config dataclass holds a value of its annotated type.

    Lists are accepted for tuple fields (JSON has no tuples) and converted;
    nested config dataclasses given as dicts are built (their own checks run).
    """
    owner = type(obj).__name__
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        tp = hints[f.name]
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            try:
                value = tp(**value)
            except TypeError as err:
                fail(owner, f.name, f"a table with fields the {tp.__name__} does not have ({err})",
                     f"fields of {tp.__name__}")
            setattr(obj, f.name, value)
        elif isinstance(value, list) and any(typing.get_origin(a) is tuple
                                             for a in (tp, *typing.get_args(tp))):
            value = tuple(value)
            setattr(obj, f.name, value)
        check_type(owner, f.name, value, tp)


# ------------------------------------------------------------------- tensors
def check_tensor(owner: str, name: str, value, *, dim: int | None = None, shape: tuple | None = None,
                 kind: str | None = None, dtypes: tuple | None = None, device: torch.device | None = None,
                 allow_none: bool = False, expected: str | None = None) -> torch.Tensor | None:
    """A tensor with the given rank / shape / dtype kind ('float' | 'int' | 'bool') / device.

    `shape` entries may be None (any size). `expected` overrides the wording of a shape error.
    """
    if value is None and allow_none:
        return None
    if not isinstance(value, torch.Tensor):
        fail(owner, name, describe(value), "a torch.Tensor" + (" or None" if allow_none else ""))
    if dim is not None and value.dim() != dim:
        fail(owner, name, f"shape {shape_str(value)}", expected or f"a {dim}-D tensor")
    if shape is not None and (value.dim() != len(shape) or any(
            s is not None and s != v for s, v in zip(shape, value.shape))):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        fail(owner, name, f"shape {shape_str(value)}", expected or want)
    if kind == "float" and not value.dtype.is_floating_point:
        fail(owner, name, f"dtype {value.dtype}", "a floating dtype")
    if kind == "int" and (value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool):
        fail(owner, name, f"dtype {value.dtype}", "an integer dtype")
    if kind == "bool" and value.dtype != torch.bool:
        fail(owner, name, f"dtype {value.dtype}", "torch.bool")
    if dtypes is not None and value.dtype not in dtypes:
        fail(owner, name, f"dtype {value.dtype}", " or ".join(str(d).replace("torch.", "") for d in dtypes))
    if device is not None and value.device != torch.device(device):
        fail(owner, name, f"device {value.device}", f"device {device}")
    return value


def all_finite(value: torch.Tensor) -> bool:
    """No NaN or inf in `value` (reads it: a host sync on a GPU). Its min and max carry both
    (NaN propagates through them): on the CPU one aminmax reduction costs a tenth to a twentieth
    of isfinite(value).all() (float32, 10^5 entries), which the learners and checks call on
    every round."""
    if value.numel() == 0 or not (value.dtype.is_floating_point or value.dtype.is_complex):
        return True
    if value.dtype.is_complex:
        value = torch.view_as_real(value)
    lo, hi = torch.aminmax(value)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def check_finite(owner: str, name: str, value: torch.Tensor, expected: str = "finite values") -> torch.Tensor:
    """No NaN or inf (reads the tensor: a host sync on a GPU)."""
    if not all_finite(value):
        flat = value.reshape(-1)
        i = int(torch.nonzero(~torch.isfinite(flat))[0])
        fail(owner, name, f"{flat[i].item()} at position {i}", expected)
    return value


def check_magnitude(owner: str, name: str, value: torch.Tensor, limit: float = MAX_MAGNITUDE, *,
                    where=None) -> torch.Tensor:
    """Finite entries have |x| <= limit (non-finite ones are left to the finiteness checks).
    `where(i)` words the position of flat entry i (default "at position i"). Reads the tensor."""
    if value.numel() == 0:
        return value
    v = value.reshape(-1)
    if v.dtype in (torch.float16, torch.bfloat16):
        v = v.float()  # compare against the limit exactly, not rounded to a half type
    big = torch.isfinite(v) & (v.abs() > limit)
    if bool(big.any()):
        i = int(torch.nonzero(big)[0])
        fail(owner, name, f"{v[i].item():.6g} {where(i) if where else f'at position {i}'}",
             f"|values| <= {limit:g} (contexts are float32 and the scorer squares them)")
    return value


# ------------------------------------------------------------------- backend
@functools.cache
def triton_available() -> bool:
    """Whether the triton package imports (it has wheels for Linux only; the core runs without it)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device | str | None, owner: str) -> str:
    """The one backend selector: 'triton', 'reference' or 'cpu' for a backend name of BACKENDS
    ('auto': Triton on CUDA, 'cpu' on the CPU, 'reference' on other devices and where triton is
    not installed). 'cpu' needs CPU tensors; 'triton' needs the triton package."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        fail(owner, "backend", describe(backend), " | ".join(BACKENDS))
    dev = torch.device(device) if device is not None else None
    if backend == "auto":
        if dev is None:
            return "reference"
        choice = {"cuda": "triton", "cpu": "cpu"}.get(dev.type, "reference")
        return "reference" if choice == "triton" and not triton_available() else choice
    if backend == "cpu" and dev is not None and dev.type != "cpu":
        fail(owner, "backend", f"'cpu' with tensors on {dev}", "auto, triton or reference for non-CPU tensors")
    if backend == "triton" and not triton_available():
        fail(owner, "backend", "'triton' but the triton package is not installed",
             "auto, reference or cpu (or install triton, which has Linux wheels)")
    return backend


def use_triton(backend: str, device: torch.device | str | None, owner: str) -> bool:
    """Whether `resolve_backend` picks the Triton kernels."""
    return resolve_backend(backend, device, owner) == "triton"
