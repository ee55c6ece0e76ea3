"""JSON Schema violations as clients read them: a dotted path and a message in JSON terms.

jsonschema words its messages with Python reprs of the whole offending value (`None is not
of type 'string'`, a 10 MiB string quoted in full). A client wrote JSON, so the message
quotes JSON (`null`, `true`, `"text"`), cut to a few hundred characters (`shown`).
"""

from __future__ import annotations

import re
from typing import Any

from jsonschema import Draft202012Validator, ValidationError

from skillq.json_values import path_part, shown

_COMPARISONS = {
    "minimum": "less than the minimum of",
    "maximum": "greater than the maximum of",
    "exclusiveMinimum": "not greater than",
    "exclusiveMaximum": "not less than",
}
_SIZES = {
    "minLength": ("shorter than", "characters"),
    "maxLength": ("longer than", "characters"),
    "minItems": ("shorter than", "items"),
    "maxItems": ("longer than", "items"),
    "minProperties": ("smaller than", "properties"),
    "maxProperties": ("larger than", "properties"),
}


def _names(names: list[str]) -> str:
    return ", ".join(shown(name) for name in names)


def _unexpected(error: ValidationError) -> list[str]:
    schema, instance = error.schema, error.instance
    if not isinstance(schema, dict) or not isinstance(instance, dict):
        return []
    known = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    return [
        key
        for key in instance
        if key not in known and not any(re.search(pattern, key) for pattern in patterns)
    ]


def describe(error: ValidationError) -> str:
    """One violation in words, quoting values as JSON."""
    keyword, expected, value = error.validator, error.validator_value, error.instance
    if keyword == "type":
        return f"{shown(value)} is not of type {shown(expected)}"
    if keyword == "required" and isinstance(value, dict):
        missing = [name for name in expected if name not in value]
        return f"missing required properties: {_names(missing)}"
    if keyword in ("additionalProperties", "unevaluatedProperties") and expected is False:
        return f"unexpected properties: {_names(_unexpected(error)) or '(see the schema)'}"
    if keyword == "enum":
        return f"{shown(value)} is not one of {shown(expected)}"
    if keyword == "const":
        return f"{shown(value)} is not {shown(expected)}"
    if keyword in _COMPARISONS:
        return f"{shown(value)} is {_COMPARISONS[keyword]} {shown(expected)}"
    if keyword in _SIZES:
        relation, unit = _SIZES[keyword]
        return f"{shown(value)} is {relation} {expected} {unit}"
    if keyword == "pattern":
        return f"{shown(value)} does not match the pattern {shown(expected)}"
    if keyword == "format":
        return f"{shown(value)} is not a valid {shown(expected)}"
    if keyword in ("oneOf", "anyOf"):
        return f"{shown(value)} matches none of the allowed forms"
    if keyword == "multipleOf":
        return f"{shown(value)} is not a multiple of {shown(expected)}"
    if keyword == "uniqueItems":
        return f"{shown(value)} has repeated items"
    return f"{shown(value)} breaks the schema's {shown(keyword)} rule ({shown(expected)})"


def schema_errors(validator: Draft202012Validator, instance: Any, root: str) -> list[dict]:
    """Every violation with a dotted path, so a client can point at the offending field."""
    details = []
    for error in sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path)):
        path = ".".join([root, *(path_part(part) for part in error.absolute_path)])
        detail = {"path": path, "message": describe(error)}
        if detail not in details:  # one line for all missing (or unexpected) properties
            details.append(detail)
    return details
