"""params.yaml -> typed, validated settings.

Each module owns the dataclass for its own section (so editing one stage's settings does not
invalidate every other stage in dvc.yaml); this module only knows how to read YAML and how to
turn a mapping into such a dataclass strictly: unknown keys, wrong types, values outside a
``Literal`` and numbers outside their range are errors that name the offending key.

Ranges are declared on the field (``field(default=0.5, metadata=in_range(0, 1))``) and checked by
``Checked.__post_init__``, so a settings object built in code is held to the same rules as one read
from params.yaml; a rule between fields (``scale`` low <= high) is a ``check()`` method.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


class ParamsError(ValueError):
    """A params.yaml value is missing, unknown, of the wrong kind or out of range."""


class SettingError(ParamsError):
    """One field of a settings object is out of range; ``key`` is its name within the object."""

    def __init__(self, key: str, message: str):
        super().__init__(f"'{key}' {message}")
        self.key, self.message = key, message


@dataclasses.dataclass(frozen=True)
class Range:
    """Allowed interval of a number (or of every item of a tuple of numbers); None: unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: low itself is not allowed
    high_open: bool = False

    def contains(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


def in_range(low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False) -> dict:
    """Field metadata declaring the allowed range: ``field(default=2, metadata=in_range(1))``."""
    return {"range": Range(low, high, low_open, high_open)}


class Checked:
    """Mixin for settings dataclasses: declared ranges and the ``check()`` rules run on construction."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            rng = f.metadata.get("range")
            value = getattr(self, f.name)
            if rng is None or value is None:
                continue
            items = value if isinstance(value, tuple) else (value,)
            if not all(rng.contains(v) for v in items):
                raise SettingError(f.name, f"= {_show(value)}; must be {rng}" + (" (every item)" if isinstance(value, tuple) else ""))
        self.check()

    def check(self) -> None:
        """Rules between fields; raise ``SettingError(key, message)``."""


def _show(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def read_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: no such params file; run from the repository root or pass --params")
    with path.open() as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return data


def section(params: dict[str, Any], dotted: str) -> dict[str, Any]:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ParamsError(f"params.yaml: missing section '{dotted}'")
        node = node[part]
    if not isinstance(node, dict):
        raise ParamsError(f"params.yaml: '{dotted}' must be a mapping")
    return node


def from_mapping(cls: type[T], mapping: dict[str, Any] | None, where: str, subset: bool = False) -> T:
    """Build dataclass ``cls`` from ``mapping``; ``where`` is the dotted params key for errors.
    ``subset``: read only ``cls``'s keys of a larger block (e.g. evaluate's ``RuntimeSettings`` from ``train``),
    leaving the rest to the block's owner to check."""
    mapping = dict(mapping or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    if subset:
        mapping = {k: v for k, v in mapping.items() if k in names}
    unknown = sorted(set(mapping) - names)
    if unknown:
        raise ParamsError(f"params.yaml: unknown key(s) {unknown} in '{where}'; valid keys: {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in mapping:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ParamsError(f"params.yaml: missing required key '{where}.{f.name}'")
            continue
        kwargs[f.name] = _coerce(hints[f.name], mapping[f.name], f"{where}.{f.name}")
    try:
        return cls(**kwargs)
    except SettingError as exc:
        raise ParamsError(f"params.yaml: '{where}.{exc.key}' {exc.message}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ParamsError as exc:
                errors.append(str(exc))
        raise ParamsError(errors[0] if len(errors) == 1 else f"params.yaml: '{where}' = {value!r} fits none of {tp}")
    if origin is Literal:
        if value not in args:
            raise ParamsError(f"params.yaml: '{where}' = {value!r}; expected one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"params.yaml: '{where}' must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ParamsError(f"params.yaml: '{where}' must have {len(args)} items, got {list(value)}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"params.yaml: '{where}' must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ParamsError(f"params.yaml: '{where}' must be a mapping")
        return from_mapping(tp, value, where)
    if tp is float:
        if isinstance(value, str) and _is_float_text(value):
            raise ParamsError(f"params.yaml: '{where}' must be a number, got the text {value!r}: YAML 1.1 reads "
                              f"exponents without a dot as text; write {_yaml_float(value)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"params.yaml: '{where}' must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"params.yaml: '{where}' must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"params.yaml: '{where}' must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"params.yaml: '{where}' must be a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported settings type {tp} at {where}")


def _is_float_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _yaml_float(text: str) -> str:
    """'4e-3' -> '4.0e-3', the spelling YAML 1.1 (PyYAML, DVC) reads as a number."""
    mantissa, _, exponent = text.lower().partition("e")
    return f"{mantissa if '.' in mantissa else mantissa + '.0'}e{exponent}" if exponent else text
