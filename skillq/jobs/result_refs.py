"""`{"$result": "a"}` in a job's params: a dependency's result, filled in when it is released.

A reference is an object holding `$result` (a dependency: its workflow node name or its
job id) and optionally `path` (into that result: `"items.0.name"`, or a list of keys and
indexes for keys holding dots). At submission a reference must name one of the job's own
dependencies, and the job type's schema is checked everywhere but at the references; when
the job is released, each reference is replaced by the value it points at and the whole
params are checked against the schema then.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from skillq.errors import InvalidParams
from skillq.json_values import path_part, shown

RESULT_KEY = "$result"
_KEYS = {RESULT_KEY, "path"}


@dataclass(frozen=True)
class Reference:
    #: Where it sits in the params, as a dotted path (`params.text`).
    at: str
    #: The dependency it names, as written.
    names: str
    #: Keys and indexes into the dependency's result; empty for the whole result.
    path: tuple[str | int, ...]


def _path_of(raw: Any, at: str) -> tuple[str | int, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return tuple(int(part) if part.isdigit() else part for part in raw.split(".") if part)
    if isinstance(raw, list) and all(
        isinstance(part, str) or (isinstance(part, int) and not isinstance(part, bool))
        for part in raw
    ):
        return tuple(raw)
    raise InvalidParams(
        "a $result reference's path is a dotted string or a list of keys and indexes",
        [{"path": f"{at}.path", "message": f"got {shown(raw)}"}],
    )


def _walk(value: Any, at: str) -> Iterator[Reference]:
    if isinstance(value, dict):
        if RESULT_KEY in value:
            if set(value) - _KEYS or not isinstance(value[RESULT_KEY], str):
                raise InvalidParams(
                    'a $result reference is {"$result": "<dependency>", "path"?: ...}',
                    [{"path": at, "message": f"got {shown(value)}"}],
                )
            yield Reference(at, value[RESULT_KEY], _path_of(value.get("path"), at))
            return
        for key, item in value.items():
            yield from _walk(item, f"{at}.{path_part(key)}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, f"{at}.{index}")


def references(params: Any, root: str = "params") -> list[Reference]:
    """Every reference in `params`; InvalidParams for a malformed one."""
    return list(_walk(params, root))


def _under(path: str, spot: str) -> bool:
    return path == spot or path.startswith(spot + ".")


def outside_references(details: list[dict], refs: list[Reference]) -> list[dict]:
    """Schema violations not at (or under) a reference, whose value is not known yet."""
    spots = [ref.at for ref in refs]
    return [
        detail
        for detail in details
        if not any(
            detail["path"] == spot or detail["path"].startswith(spot + ".") for spot in spots
        )
    ]


def _follow(result: Any, ref: Reference) -> Any:
    value = result
    for step in ref.path:
        if isinstance(value, dict) and isinstance(step, str) and step in value:
            value = value[step]
        elif isinstance(value, dict) and isinstance(step, int) and str(step) in value:
            value = value[str(step)]
        elif isinstance(value, list) and isinstance(step, int) and step < len(value):
            value = value[step]
        else:
            where = ".".join(str(part) for part in ref.path)
            raise LookupError(f"{ref.at}: the result of {ref.names} has no {shown(where)}")
    return value


def resolve(params: Any, result_of: Callable[[str], Any], root: str = "params") -> Any:
    """`params` with each reference replaced by what it points at in `result_of(name)`;
    LookupError naming the reference when its path is not in that result."""
    if isinstance(params, dict):
        if RESULT_KEY in params:
            ref = Reference(root, params[RESULT_KEY], _path_of(params.get("path"), root))
            return _follow(result_of(ref.names), ref)
        return {
            key: resolve(item, result_of, f"{root}.{path_part(key)}")
            for key, item in params.items()
        }
    if isinstance(params, list):
        return [resolve(item, result_of, f"{root}.{i}") for i, item in enumerate(params)]
    return params
