"""The typed key machinery: declare a key, convert a value (ini text or JSON), check it, build a section.

Each config section is a frozen dataclass whose fields are declared with
:func:`key` (type hint, default, one-line doc, constraints).  A value is read
in one of two :class:`Dialect` s, ini text (:data:`INI`) or a parsed JSON value
(:data:`JSON`, the FAFB evaluation settings), and then checked by the same
:func:`check_value` and turned into section values by :func:`section_values`.
Errors are :class:`ConfigError` naming the place (file, section, key).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import SynfulError


class ConfigError(SynfulError, ValueError):
    """A config value, section or file is invalid; the message names file, section and key."""


def key(default: Any = dataclasses.MISSING, doc: str = "", *, choices: tuple | None = None,
        minimum: float | None = None, maximum: float | None = None, positive: bool = False, path: bool = False):
    """Declare one config key: its default, one-line doc and constraints.

    ``minimum`` / ``maximum`` are inclusive bounds; ``positive=True`` requires
    values > 0.  Numbers must be finite (nan and inf are refused for every key).
    ``path=True`` marks a str key whose relative value resolves against the
    folder of the ini file it was read from.  A key without default is required.
    """
    meta = {"doc": doc, "choices": choices, "minimum": minimum, "maximum": maximum, "positive": positive,
            "path": path}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


Int3 = tuple[int, int, int]
Float3 = tuple[float, float, float]

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if origin is tuple:
        args = typing.get_args(tp)
        return f"{len(args)} comma-separated {_plural(args[0])}"
    if origin is list:
        inner = typing.get_args(tp)[0]
        if typing.get_origin(inner) is tuple:
            return f"a list of {len(typing.get_args(inner))}-tuples of {_plural(typing.get_args(inner)[0])}"
        return f"a comma-separated list of {_plural(inner)}"
    return str(tp)


def _plural(tp) -> str:
    return {int: "integers", float: "numbers", str: "strings"}.get(tp, str(tp))


def _split_items(text: str) -> list[str]:
    text = text.strip()
    if text.startswith(("[", "(")) and text.endswith(("]", ")")):
        text = text[1:-1]
    return [t.strip() for t in text.split(",") if t.strip() != ""]


def _parse_scalar(tp, text: str):
    text = text.strip()
    if tp is bool:
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError
    if tp is int:
        return int(text)
    if tp is float:
        return float(text)
    if tp is str:
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            return text[1:-1]
        return text
    raise TypeError(tp)


def _parse_value(tp, text: str):
    """Parse ``text`` as type ``tp``; raise ValueError with a short reason."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if type(None) in typing.get_args(tp) and text.strip() in ("", "None", "none", "null"):
            return None
        errors = []
        for a in args:
            try:
                return _parse_value(a, text)
            except ValueError as e:  # try the next alternative
                errors.append(e)
        raise ValueError(" or ".join(_type_name(a) for a in args))
    if origin is tuple:
        args = typing.get_args(tp)
        items = _split_items(text)
        if len(items) != len(args):
            raise ValueError(f"{_type_name(tp)} (z, y, x)" if len(args) == 3 else _type_name(tp))
        try:
            return tuple(_parse_scalar(a, t) for a, t in zip(args, items))
        except ValueError:
            raise ValueError(_type_name(tp)) from None
    if origin is list:
        inner = typing.get_args(tp)[0]
        if typing.get_origin(inner) is tuple:
            if text.strip() in ("", "[]"):
                return []
            try:
                value = ast.literal_eval(text.strip())
            except (ValueError, SyntaxError):
                raise ValueError(_type_name(tp)) from None
            n = len(typing.get_args(inner))
            if not isinstance(value, (list, tuple)) or not all(
                    isinstance(v, (list, tuple)) and len(v) == n for v in value):
                raise ValueError(_type_name(tp))
            try:
                return [tuple(_parse_scalar(a, str(t)) for a, t in zip(typing.get_args(inner), v)) for v in value]
            except ValueError:
                raise ValueError(_type_name(tp)) from None
        try:
            return [_parse_scalar(inner, t) for t in _split_items(text)]
        except ValueError:
            raise ValueError(_type_name(tp)) from None
    try:
        return _parse_scalar(tp, text)
    except ValueError:
        raise ValueError(_type_name(tp)) from None


def _format_value(value) -> str:
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ", ".join(_format_value(v) for v in value)
    if isinstance(value, list):
        if not value:
            return "[]"
        if isinstance(value[0], tuple):
            return "[" + ", ".join("[" + ", ".join(str(x) for x in v) + "]" for v in value) + "]"
        return ", ".join(_format_value(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _json_value(tp, value, where: str):
    """``value`` (parsed JSON) checked against type hint ``tp``; numbers widen int -> float."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _json_value(inner, value, where)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a JSON list, got {json.dumps(value)}")
        return [_json_value(inner, v, where) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {json.dumps(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {json.dumps(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {json.dumps(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {json.dumps(value)}")
    raise TypeError(tp)  # a key type this reader does not know: a programming error


def _ini_value(tp, text: str, where: str):
    """``text`` (an ini value) parsed as type hint ``tp``."""
    try:
        return _parse_value(tp, text)
    except ValueError as e:
        raise ConfigError(f"{where}: expected {e}, got '{text.strip()}'") from None


@dataclass(frozen=True)
class Dialect:
    """How one file format gives values: ``convert(type hint, raw, where)`` returns the typed value or raises
    :class:`ConfigError`; ``show`` writes a value in messages, ``show_choice`` a value outside ``choices``;
    ``file_order``: keys are checked in the file's order (else in the dataclass's)."""

    convert: Callable[[Any, Any, str], Any]
    show: Callable[[Any], str]
    show_choice: Callable[[Any], str]
    file_order: bool


#: ini text (configparser values)
INI = Dialect(_ini_value, _format_value, lambda v: f"'{v}'", file_order=False)
#: parsed JSON values (the evaluation JSON; json.loads reads NaN and Infinity, which are refused)
JSON = Dialect(_json_value, json.dumps, json.dumps, file_order=True)


def _scalars(v):
    if isinstance(v, (list, tuple)):
        for x in v:
            yield from _scalars(x)
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        yield v


def check_value(meta: dict, value, where: str, dialect: Dialect = INI) -> None:
    """Check a converted value against its key's ``choices``, finiteness and bounds (:func:`key`)."""
    if value is None:
        return
    lo, hi, choices = meta.get("minimum"), meta.get("maximum"), meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {dialect.show_choice(value)}")
    for v in _scalars(value):
        # nan passes every comparison and inf every open bound: refuse both first
        if not math.isfinite(v):
            raise ConfigError(f"{where}: expected a finite number, got {dialect.show(value)}")
        if meta.get("positive") and not v > 0:
            raise ConfigError(f"{where}: must be > 0, got {dialect.show(value)}")
        if lo is not None and v < lo:
            raise ConfigError(f"{where}: must be >= {lo:g}, got {dialect.show(value)}")
        if hi is not None and v > hi:
            raise ConfigError(f"{where}: must be <= {hi:g}, got {dialect.show(value)}")


def has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def default_of(f: dataclasses.Field):
    """The default value of a field (a fresh one for list defaults), None for a required key."""
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def section_name(cls) -> str:
    """The ini section name of a section dataclass (its class name)."""
    return cls.__name__


def section_values(cls, items: dict, prefix: str, base_dir: Path | None, dialect: Dialect = INI,
                   required: tuple = ()) -> dict:
    """Checked values of the keys of section dataclass ``cls`` given in ``items`` ({key: raw value}).

    ``prefix`` starts every message (``FILE [Section]`` for ini, ``FILE`` for JSON).  Refuses unknown
    keys (a key in ``cls.MOVED`` with a message naming its replacement), keys in ``required`` (in that order) or without default that are absent, and values of the
    wrong type or range.  Relative ``path`` keys resolve against ``base_dir`` (None: kept as written).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(items) - set(fields))
    moved = getattr(cls, "MOVED", {})  # old keys name their replacement instead of being silently accepted
    for name in unknown:
        if name in moved:
            raise ConfigError(f"{prefix} {name}: no longer read, use {moved[name]} instead (got {dialect.show(items[name])})")
    if unknown:
        raise ConfigError(f"{prefix} {unknown[0]}: unknown key (known keys: {', '.join(fields)})")
    for name in (*required, *fields):
        if name not in items and (name in required or not has_default(fields[name])):
            raise ConfigError(f"{prefix} {name}: missing required key ({fields[name].metadata['doc']})")
    hints = _hints(cls)
    values = {}
    for name in (items if dialect.file_order else [n for n in fields if n in items]):
        where = f"{prefix} {name}"
        meta = fields[name].metadata
        value = dialect.convert(hints[name], items[name], where)
        check_value(meta, value, where, dialect)
        if meta.get("path") and value is not None and base_dir is not None:
            value = str((base_dir / os.path.expanduser(value)).resolve())
        values[name] = value
    return values


def to_dict(section) -> dict:
    """A section instance as a plain JSON-able dict."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(section).items()}
