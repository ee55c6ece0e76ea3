"""The quick schema checks never say "valid" where jsonschema finds an error, and do say it
for the usual valid submissions (or the submit would pay for both)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from skillq.actors.diagnostics import SLEEP_PARAMS
from skillq.actors.examples import GENERATE_EXAMPLES_PARAMS
from skillq.actors.index import INDEX_DOCUMENTS_PARAMS
from skillq.actors.skills import EXECUTE_SKILL_PARAMS
from skillq.jobs.quick_schemas import quick_check
from skillq.jobs.submissions import SUBMISSION_SCHEMA

#: Every keyword the checks compile, each with values on both sides of its rule.
PLAIN = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 2, "maxLength": 5, "pattern": "^[a-z]+$"},
        "count": {"type": "integer", "minimum": 1, "maximum": 3},
        "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
        "either": {"type": ["string", "null"], "description": "an annotation"},
        "flag": {"type": "boolean", "default": False},
        "anything": {},
        "nested": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
        "unknown": {"enum": [1, 2]},
    },
    "required": ["name"],
    "additionalProperties": False,
}
UNTYPED = {"minimum": 1, "maxLength": 2, "required": ["a"], "items": {"maximum": 0}}
SCHEMAS = [
    PLAIN,
    UNTYPED,
    SUBMISSION_SCHEMA,
    SLEEP_PARAMS,
    GENERATE_EXAMPLES_PARAMS,
    INDEX_DOCUMENTS_PARAMS,
    EXECUTE_SKILL_PARAMS,
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(-2, 5),
    st.sampled_from([0.5, 1.0, float("nan"), float("inf"), 2**70]),
    st.text(max_size=6),
    st.sampled_from(["ab", "abc", "a\x00", "AB", "x", "sleep", "normal", "high"]),
)
#: Property names of the schemas above, so generated objects meet their rules.
names = st.sampled_from(
    [
        "name",
        "count",
        "ratio",
        "tags",
        "either",
        "flag",
        "anything",
        "nested",
        "unknown",
        "a",
        "type",
        "params",
        "priority",
        "ttl_hours",
        "idempotency_key",
        "depends_on",
        "run_at",
        "delay_secs",
        "callback_url",
        "secs",
        "text",
        "documents",
        "collection",
        "other",
    ]
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(names, inner, max_size=5)),
    max_leaves=12,
)


CHECKED = [(quick_check(schema), Draft202012Validator(schema)) for schema in SCHEMAS]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(0, len(CHECKED) - 1), instance=json_values)
def test_a_quick_yes_is_never_wrong(index: int, instance: Any) -> None:
    check, validator = CHECKED[index]
    if check is not None and check(instance):
        assert validator.is_valid(instance), instance


@pytest.mark.parametrize(
    "instance",
    [
        {"name": "ab"},
        {"name": "abcde", "count": 3, "ratio": 0.5, "tags": ["x"], "either": None},
        {"name": "abc", "flag": True, "anything": [1, {}], "nested": {"a": 1, "b": "c"}},
    ],
)
def test_valid_plain_instances_get_a_quick_yes(instance: dict[str, Any]) -> None:
    check = quick_check(PLAIN)
    assert check is not None and check(instance)


@pytest.mark.parametrize(
    "instance",
    [
        {"name": "ab", "unknown": 1},  # a keyword it cannot check: not sure
        {"name": "ab", "count": 1.0},  # an integer that is a float: not sure
        {"name": "ab", "ratio": True},  # a boolean is no number
        {"name": "ab", "ratio": Decimal("0.5")},  # a number of another type: not sure
        {"name": "AB"},
        {"name": "a"},
        {"name": "ab", "count": 4},
        {"name": "ab", "ratio": 1},
        {"name": "ab", "tags": []},
        {"name": "ab", "tags": [1]},
        {"name": "ab", "nested": {}},
        {"name": "ab", "other": 1},
        {"count": 1},
        ["name"],
    ],
)
def test_anything_else_goes_to_the_full_validator(instance: Any) -> None:
    check = quick_check(PLAIN)
    assert check is not None and not check(instance)


def test_usual_submissions_get_a_quick_yes() -> None:
    envelope = quick_check(SUBMISSION_SCHEMA)
    assert envelope is not None
    assert envelope({"type": "sleep", "params": {"secs": 1}})
    assert envelope({"type": "sleep", "idempotency_key": "k", "ttl_hours": 2, "delay_secs": 3})
    # `priority` is a oneOf: the full validator decides.
    assert not envelope({"type": "sleep", "priority": "high"})


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "format": "date-time"},
        {"$ref": "#/$defs/x", "$defs": {"x": {}}},
        {"type": "string", "pattern": "("},
        {"type": "object", "additionalProperties": {"type": "string"}},
        {"type": "integer", "minimum": True},
        False,
    ],
)
def test_schemas_beyond_the_plain_keywords_are_not_compiled(schema: Any) -> None:
    assert quick_check(schema) is None
