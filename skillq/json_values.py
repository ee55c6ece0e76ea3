"""Which JSON values skillq accepts, and how it shows a value back in an error.

The rule: nothing is written unless it can be read back. Python's `json` parses `NaN`,
`Infinity`, numbers that overflow to infinity, lone surrogates (`"\\ud800"`) and integers of
thousands of digits; the stores then take some of them (SQLite all, PostgreSQL some) and
every later read of the row fails, for its owner and for every listing that includes it.
So each way in (REST body, MCP arguments, CLI options, schedules, a tool's output, a job's
result) puts the value through `storable_problems` before anything is written. A value
passes when:

- its numbers are finite, and its integers have at most `MAX_INTEGER_DIGITS` digits (CPython
  refuses to convert more than 4,300 either way; the MCP SDK's parser too). JSON Schema
  cannot bound the integers inside a free-form value, so a tighter bound (64 bits) would
  refuse requests the OpenAPI document calls valid; clients that need exact integers
  across languages should keep to 64 bits (JavaScript: 2^53) themselves;
- its strings, object keys included, are valid Unicode (no lone surrogates). NUL is fine:
  the stores keep JSON as escaped text, so `"\\u0000"` reads back as written;
- it nests at most `MAX_DEPTH` arrays and objects;
- it is made of JSON types only (objects with string keys, arrays, strings, numbers,
  booleans, null).

Errors quote the offending value as JSON (`null`, `true`, never Python's `None`, `True`),
cut to `PREVIEW_CHARS`, so a 10 MiB argument is never echoed back whole.
"""

from __future__ import annotations

import json
import math
from typing import Any

from skillq.errors import InvalidRequest

#: Deepest nesting of arrays and objects a value may have. Deeper documents are almost
#: always an attack on recursive code (schema validation, serialisation).
MAX_DEPTH = 64
#: Longest integer, in decimal digits, a value may hold.
MAX_INTEGER_DIGITS = 4000
_INTEGER_LIMIT = 10**MAX_INTEGER_DIGITS
#: At most this many characters of a value are quoted back in an error message.
PREVIEW_CHARS = 200
#: At most this many characters of an object key are quoted in a path.
PATH_PART_CHARS = 64
#: At most this many problems are reported for one value.
MAX_PROBLEMS = 10


class _OversizedInteger:
    """An integer literal too long to convert: kept as a marker so the check can name its
    path, instead of the parser failing without one."""

    def __init__(self, literal: str) -> None:
        self.digits = len(literal.lstrip("-"))


def _parse_int(literal: str) -> int | _OversizedInteger:
    if len(literal.lstrip("-")) > MAX_INTEGER_DIGITS:
        return _OversizedInteger(literal)
    return int(literal)


def _refuse_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")


class _NotJson(ValueError):
    pass


def parse_json(text: str | bytes, what: str = "body") -> Any:
    """Parse a JSON document strictly: `NaN`, `Infinity` and `-Infinity` are refused here,
    like any other syntax error (InvalidRequest, HTTP 400). What parses may still break
    `storable_problems` (an integer out of range, a lone surrogate): the caller checks that
    where it knows the value's path."""
    try:
        document = json.loads(text, parse_constant=_refuse_constant, parse_int=_parse_int)
    except json.JSONDecodeError as error:
        message = f"{error.msg} at line {error.lineno} col {error.colno}"
    except _NotJson as error:
        message = str(error)
    except RecursionError:
        message = "nested too deeply"
    except UnicodeDecodeError:
        message = "not UTF-8"
    else:
        if depth(document) > MAX_DEPTH:
            message = f"nested too deeply: at most {MAX_DEPTH} levels of arrays/objects"
        else:
            return document
    raise InvalidRequest(f"{what} is not valid JSON", [{"path": what, "message": message}])


def depth(value: Any) -> int:
    """Nesting depth without recursion, so a hostile document cannot exhaust the stack."""
    levels, level = 0, [value]
    while level:
        levels += 1
        children: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                children.extend(item.values())
            elif isinstance(item, list | tuple):
                children.extend(item)
        level = [child for child in children if isinstance(child, dict | list | tuple)]
    return levels


def _valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _string_problem(text: str) -> str:
    for index, char in enumerate(text):
        if 0xD800 <= ord(char) <= 0xDFFF:
            return f"not valid Unicode: a lone surrogate \\u{ord(char):04x} at character {index}"
    return "not valid Unicode"


def _scalar_problem(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        return None if _valid_unicode(value) else _string_problem(value)
    if isinstance(value, int):
        if -_INTEGER_LIMIT < value < _INTEGER_LIMIT:
            return None
        return f"integer out of range: at most {MAX_INTEGER_DIGITS} digits"
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return "not a finite number: NaN, Infinity and numbers beyond ±1.8e308 cannot be stored"
    if isinstance(value, _OversizedInteger):
        return f"integer out of range: {value.digits} digits, at most {MAX_INTEGER_DIGITS}"
    return f"not a JSON value (a {type(value).__name__})"


def path_part(part: Any) -> str:
    """One step of a dotted path; a key is cut like any echoed value."""
    text = str(part)
    return text if len(text) <= PATH_PART_CHARS else f"{text[:PATH_PART_CHARS]}…"


def _join(path: str, part: Any) -> str:
    return f"{path}.{path_part(part)}"


def storable_problems(value: Any, root: str) -> list[dict[str, str]]:
    """What keeps `value` from being stored and read back identically, one `{path, message}`
    per problem (at most MAX_PROBLEMS), paths dotted from `root` as schema errors are."""
    problems: list[dict[str, str]] = []
    # Iterative, depth-first: a hostile document cannot exhaust the stack.
    stack: list[tuple[Any, str, int]] = [(value, root, 1)]
    while stack and len(problems) < MAX_PROBLEMS:
        item, path, level = stack.pop()
        if isinstance(item, dict | list | tuple):
            if level > MAX_DEPTH:
                message = f"nested too deeply: at most {MAX_DEPTH} levels of arrays/objects"
                problems.append({"path": path, "message": message})
                continue
            if isinstance(item, dict):
                children = []
                for key, child in item.items():
                    if not isinstance(key, str):
                        message = f"object keys must be strings, not {type(key).__name__}"
                        problems.append({"path": path, "message": message})
                    elif not _valid_unicode(key):
                        problems.append({"path": path, "message": f"key {_string_problem(key)}"})
                    else:
                        children.append((child, _join(path, key), level + 1))
            else:
                children = [(child, _join(path, i), level + 1) for i, child in enumerate(item)]
            stack.extend(reversed(children))
            continue
        problem = _scalar_problem(item)
        if problem is not None:
            problems.append({"path": path, "message": problem})
    return problems[:MAX_PROBLEMS]


def storable_text(text: str) -> str:
    """A free text (a progress message, an error message) made storable on both stores:
    PostgreSQL text holds no NUL and no lone surrogate, so they become U+FFFD."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if not _valid_unicode(text):
        text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def shown(value: Any, limit: int = PREVIEW_CHARS) -> str:
    """`value` as JSON for an error message, cut to about `limit` characters."""
    size = None
    if isinstance(value, str) and len(value) > limit:
        # No need to encode megabytes to show two hundred characters.
        size, value = len(value), value[:limit]
    try:
        text = json.dumps(value, ensure_ascii=False, default=repr, allow_nan=True)
    except (ValueError, RecursionError):
        text = repr(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if size is not None:
        return f"{text[:-1]}… ({size} characters)"
    if len(text) > limit:
        return f"{text[:limit]}… ({len(text)} characters of JSON)"
    return text
