"""A quick yes for a valid submission before jsonschema's full walk.

jsonschema interprets a schema anew on every call: each property it descends into builds a
resource, a resolver and a new validator. On a submit that was ~0.3 ms of CPU (two schemas:
the submission's envelope and its job type's params), the largest share of the submit's own
work on SQLite. Here a schema written with the plain keywords job types use (type, properties,
required, additionalProperties, bounds, lengths, pattern, items) is turned once into nested
Python checks.

The check only ever answers "valid" or "not sure": `True` means jsonschema (Draft 2020-12,
with or without a format checker) would find no error; `False` sends the instance to the full
validator, which finds the errors and words them (`schema_messages`). So a keyword, a value or
a type this module does not know makes it say "not sure", never "valid": any other keyword
(`format`, `enum`, `oneOf`, `$ref`, ...) makes its subschema unknown, and a property whose
subschema is unknown must be absent for a quick yes. Types are matched exactly (an `integer`
is an `int`, never a float such as `1.0`), which is narrower than JSON Schema, never wider.

Why not a compiled validator from PyPI: fastjsonschema stops at draft 7, and jsonschema-rs
(2020-12, ~1 µs a check) matches `pattern` with ECMA-262 regular expressions and checks
formats its own way, while the validator that decides here (jsonschema) uses Python's `re`
and its format checker: a quick yes from it could accept a value the authority refuses
(e.g. `\\s` matches U+FEFF in ECMA-262, not in Python). This module reuses the authority's
own semantics for every keyword it compiles.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable
from typing import Any

#: A compiled schema: True only if the instance is valid.
Check = Callable[[Any], bool]

#: Keywords that never make an instance invalid.
_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
    }
)
_KEYWORDS = frozenset(
    {
        "type", "properties", "required", "additionalProperties", "minimum", "maximum",
        "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern", "items",
        "minItems", "maxItems",
    }
)  # fmt: skip
#: Python types an instance of each JSON type may have for a quick yes (bool is not a number).
_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "null": (type(None),),
}
_BOUNDS: dict[str, Callable[[Any, Any], bool]] = {
    "minimum": lambda value, bound: value >= bound,
    "maximum": lambda value, bound: value <= bound,
    "exclusiveMinimum": lambda value, bound: value > bound,
    "exclusiveMaximum": lambda value, bound: value < bound,
}


def quick_check(schema: Any) -> Check | None:
    """The schema as a check (see the module's docstring), or None when it uses a keyword
    or a value outside the plain ones, so every instance needs the full validator."""
    if schema is True or schema == {}:
        return _always
    if not isinstance(schema, dict) or not set(schema) <= _KEYWORDS | _ANNOTATIONS:
        return None
    checks: list[Check] = []
    # `type` first: it fails fastest (the others do not rely on it).
    for keyword in sorted(schema.keys() & _KEYWORDS, key=lambda name: name != "type"):
        check = _KEYWORD_CHECKS[keyword](schema[keyword], schema)
        if check is None:
            return None
        if check is not _always:
            checks.append(check)
    if not checks:
        return _always
    if len(checks) == 1:
        return checks[0]
    return _all_of(checks)


def _all_of(checks: list[Check]) -> Check:
    # Loops rather than `all()` over a generator, here and below: half the time per submit.
    def check(instance: Any) -> bool:
        for each in checks:  # noqa: SIM110
            if not each(instance):
                return False
        return True

    return check


def _always(instance: Any) -> bool:
    return True


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _not_a_number(value: Any) -> bool:
    """Whether jsonschema's number keywords leave `value` alone (as its `is_number`)."""
    return isinstance(value, bool) or not isinstance(value, numbers.Number)


def _type(names: Any, schema: dict[str, Any]) -> Check | None:
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list) or not names or not all(n in _TYPES for n in names):
        return None
    exact = frozenset(kind for name in names for kind in _TYPES[name])
    return lambda instance: type(instance) in exact


def _properties(properties: Any, schema: dict[str, Any]) -> Check | None:
    if not isinstance(properties, dict):
        return None
    known = [(name, quick_check(sub)) for name, sub in properties.items()]
    checked = [(name, check) for name, check in known if check is not None and check is not _always]
    unknown = [name for name, check in known if check is None]

    def check(instance: Any) -> bool:
        if not isinstance(instance, dict):
            return True
        for name in unknown:
            if name in instance:
                return False
        for name, sub in checked:  # noqa: SIM110
            if name in instance and not sub(instance[name]):
                return False
        return True

    return check


def _required(names: Any, schema: dict[str, Any]) -> Check | None:
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        return None

    def check(instance: Any) -> bool:
        if isinstance(instance, dict):
            for name in names:
                if name not in instance:
                    return False
        return True

    return check


def _additional_properties(allowed: Any, schema: dict[str, Any]) -> Check | None:
    if allowed is True:
        return _always
    properties = schema.get("properties", {})
    if allowed is not False or not isinstance(properties, dict):
        return None
    names = frozenset(properties)
    return lambda instance: not isinstance(instance, dict) or instance.keys() <= names


def _bound(keyword: str) -> Callable[[Any, dict[str, Any]], Check | None]:
    within = _BOUNDS[keyword]

    def compile_bound(bound: Any, schema: dict[str, Any]) -> Check | None:
        if not _is_number(bound):
            return None
        # A number of another type (Decimal, Fraction) is "not sure", not "not a number".
        return lambda instance: (
            _not_a_number(instance) or (_is_number(instance) and within(instance, bound))
        )

    return compile_bound


def _length(kind: type, longest: bool) -> Callable[[Any, dict[str, Any]], Check | None]:
    def compile_length(size: Any, schema: dict[str, Any]) -> Check | None:
        if type(size) is not int:
            return None
        if longest:
            return lambda instance: not isinstance(instance, kind) or len(instance) <= size
        return lambda instance: not isinstance(instance, kind) or len(instance) >= size

    return compile_length


def _pattern(pattern: Any, schema: dict[str, Any]) -> Check | None:
    # jsonschema's own test: `re.search(pattern, instance)`.
    try:
        search = re.compile(pattern).search if isinstance(pattern, str) else None
    except re.error:
        return None
    if search is None:
        return None
    return lambda instance: not isinstance(instance, str) or search(instance) is not None


def _items(items: Any, schema: dict[str, Any]) -> Check | None:
    each = quick_check(items)
    if each is None:
        return None
    return lambda instance: not isinstance(instance, list) or all(each(item) for item in instance)


_KEYWORD_CHECKS: dict[str, Callable[[Any, dict[str, Any]], Check | None]] = {
    "type": _type,
    "properties": _properties,
    "required": _required,
    "additionalProperties": _additional_properties,
    "minimum": _bound("minimum"),
    "maximum": _bound("maximum"),
    "exclusiveMinimum": _bound("exclusiveMinimum"),
    "exclusiveMaximum": _bound("exclusiveMaximum"),
    "minLength": _length(str, longest=False),
    "maxLength": _length(str, longest=True),
    "minItems": _length(list, longest=False),
    "maxItems": _length(list, longest=True),
    "pattern": _pattern,
    "items": _items,
}
