"""Turns a parsed TOML table into typed, frozen settings dataclasses, or one SettingsError.

Generic over the schema in `skillq.settings`: a dataclass field's type says how a raw value
is converted (with `${VAR}` substitution first) and its `Annotated` rule which values are
allowed; `Context.checks` adds the rules that span several fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NoReturn

from skillq.errors import SettingsError

_CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)


def _cron_problem(spec: str) -> str | None:
    """periodiq accepts e.g. minute 61 or a sixth field silently, so check what it parsed.
    Imported here: periodiq brings dramatiq, which a settings file without schedules (and
    quick commands such as minting a token) should not pay for."""
    from periodiq import CronSpec

    text = spec.strip()
    if text.startswith("@") and text not in CronSpec._named_spec:
        return f"unknown shortcut {text!r}"
    parts = CronSpec._named_spec.get(text, text).split()
    if len(parts) != 5:
        return f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}"
    try:
        parsed = CronSpec.parse(spec)
    except Exception as exc:
        return str(exc) or type(exc).__name__
    values = (parsed.minute, parsed.hour, parsed.dom, parsed.month, parsed.dow)
    for (name, lo, hi), got in zip(_CRON_FIELDS, values, strict=True):
        if not got or min(got) < lo or max(got) > hi:
            return f"{name} must be within {lo}..{hi}"
    return None


# --- conversion ---

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_PARSERS: dict[type, Callable[[str], Any]] = {
    bool: lambda s: _BOOLS.get(s.lower()),
    int: lambda s: int(s) if _INT.fullmatch(s) else None,
    float: lambda s: float(s) if _FLOAT.fullmatch(s) else None,
}
_EXPECTED = {int: "an integer", float: "a finite number", bool: "a boolean", str: "a string"}
_EXPECTED.update({Path: "a non-empty path", dict: "a table"})


@dataclass(slots=True)
class Context:
    """What converting one file needs besides the values: where relative paths start, the
    data directory that `in_data_dir` defaults follow, and the cross-field checks per class."""

    base_dir: Path
    data_dir: Path
    checks: Mapping[type, Callable[[Any, str], None]] = field(default_factory=dict)


def _substitute(text: str, key: str) -> str:
    """Like the shell: ``${VAR:-default}`` also applies when VAR is set but empty."""

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if default is not None:
            return value or default
        if value is None:
            raise SettingsError(f"environment variable {name} is not set", key)
        return value

    return _VAR.sub(replace, text)


def _substitute_tree(value: Any, key: str) -> Any:
    if isinstance(value, str):
        return _substitute(value, key)
    if isinstance(value, dict):
        return {k: _substitute_tree(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute_tree(v, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


def _wrong_type(expected: str, value: Any, key: str) -> SettingsError:
    names = {bool: "boolean", int: "integer", float: "float", str: "string"}
    names.update({dict: "table", list: "array"})
    got = names.get(type(value), type(value).__name__)
    got += f" {str(value).lower()}" if type(value) is bool else ""
    got += f" {value!r}" if type(value) in (int, float, str) else ""
    return SettingsError(f"expected {expected} (got {got})", key)


def _scalar(tp: type, value: Any, key: str, ctx: Context) -> Any:
    """TOML types map straight through; strings (e.g. from ``${PORT}``) must parse cleanly."""
    got = value
    if isinstance(value, str) and tp in _PARSERS:
        value = _PARSERS[tp](value.strip())
    elif tp is float and type(value) is int:
        value = float(value)
    elif tp is Path and isinstance(value, str) and value:
        path = Path(value).expanduser()
        return path if path.is_absolute() else ctx.base_dir / path
    elif tp is dict and isinstance(value, dict):
        return _substitute_tree(value, key)
    if type(value) is tp and (tp is not float or math.isfinite(value)):
        return value
    raise _wrong_type(_EXPECTED[tp], got, key)


def _convert(tp: Any, value: Any, key: str, ctx: Context) -> Any:
    if isinstance(value, str):
        value = _substitute(value, key)
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType):  # ``X | None``: an empty string means unset
        if value == "":
            return None
        return _convert(next(a for a in args if a is not type(None)), value, key, ctx)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key, ctx)
    if typing.get_origin(tp) is dict and args:  # a table of tables, e.g. [job_types.<name>]
        if not isinstance(value, dict):
            raise _wrong_type("a table", value, key)
        return {name: _convert(args[1], item, f"{key}.{name}", ctx) for name, item in value.items()}
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, list):
            raise _wrong_type("an array of tables", value, key)
        return tuple(_convert(args[0], item, f"{key}[{i}]", ctx) for i, item in enumerate(value))
    return _scalar(tp, value, key, ctx)


def _constrain(value: Any, spec: dict[str, Any], key: str) -> None:
    def fail(problem: str) -> NoReturn:
        raise SettingsError(f"{problem} (got {value!r})", key)

    if "choices" in spec and value not in spec["choices"]:
        fail(f"must be one of {', '.join(spec['choices'])}")
    lo, hi, gt = spec.get("lo"), spec.get("hi"), spec.get("gt")
    if lo is not None and hi is not None and not lo <= value <= hi:
        fail(f"must be between {lo} and {hi}")
    if lo is not None and hi is None and value < lo:
        fail(f"must be at least {lo}")
    if gt is not None and value <= gt:
        fail(f"must be greater than {gt}")
    if spec.get("nonempty") and not value.strip():
        fail("must not be empty")
    if "prefix" in spec and not value.startswith(spec["prefix"]):
        fail(f"must start with {spec['prefix']!r}")
    if spec.get("cron") and (problem := _cron_problem(value)):
        raise SettingsError(f"invalid cron expression {value!r}: {problem}", key)


@functools.cache
def _schema(cls: type) -> dict[str, tuple[Any, dict[str, Any], bool]]:
    """Per field: the plain type, its constraint spec, and whether the file must give it."""
    hints = typing.get_type_hints(cls, include_extras=True)
    schema = {}
    for fld in dataclasses.fields(cls):
        tp, spec = hints[fld.name], {}
        if typing.get_origin(tp) is Annotated:
            tp, *rules = typing.get_args(tp)
            spec = {k: v for rule in rules for k, v in rule.items()}
        required = fld.default is fld.default_factory is dataclasses.MISSING
        if not spec.get("internal"):
            schema[fld.name] = (tp, spec, required)
    return schema


def build(cls: type, raw: Any, where: str, ctx: Context) -> Any:
    if not isinstance(raw, dict):
        raise _wrong_type("a table", raw, where or "(top level)")
    schema = _schema(cls)
    for name in raw:
        if name not in schema:
            close = difflib.get_close_matches(name, schema, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SettingsError(f"unknown key{hint}", f"{where}.{name}" if where else name)
    kwargs: dict[str, Any] = {}
    for name, (tp, spec, required) in schema.items():
        key = f"{where}.{name}" if where else name
        if name in raw:
            kwargs[name] = _convert(tp, raw[name], key, ctx)
            if kwargs[name] is not None:
                _constrain(kwargs[name], spec, key)
        elif dataclasses.is_dataclass(tp):  # build absent sections so derived defaults apply
            kwargs[name] = build(tp, {}, key, ctx)
        elif "in_data_dir" in spec:
            kwargs[name] = ctx.data_dir / spec["in_data_dir"]
        elif required:
            raise SettingsError("required key is missing", key)
    obj = cls(**kwargs)
    if isinstance(getattr(obj, "data_dir", None), Path):  # later sections' defaults follow it
        ctx.data_dir = obj.data_dir
    if check := ctx.checks.get(cls):
        check(obj, where)
    return obj


def read_toml(path: Path, via: str) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problem = f"file not found{via}"
    except UnicodeDecodeError:
        problem = "file is not valid UTF-8"
    except OSError as exc:
        problem = f"cannot read file: {exc.strerror}"
    except tomllib.TOMLDecodeError as exc:
        m = re.fullmatch(r"(.*) \((at line \d+, column \d+|at end of document)\)", str(exc), re.S)
        problem = f"invalid TOML {m[2]}: {m[1]}" if m else f"invalid TOML: {exc}"
    raise SettingsError(problem, source=path)
