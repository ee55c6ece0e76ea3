"""One error hierarchy for every way into skillq.

The coordinator, the store and the skill engine raise these. Each carries a stable machine
`code` (the same string on every surface) and a message, never a transport's status: how
an error leaves skillq is decided by the surface it leaves through, each in one table.

    SkillqError               internal_error       anything not classified below
    ├── InvalidRequest        invalid_request      the request itself is malformed
    ├── InvalidParams         invalid_params       well-formed, but breaks a schema (details
    │                                              list the failing paths)
    ├── UnknownJobType        unknown_job_type     no job type of that name
    ├── NotFound              not_found            no such job (or not the caller's)
    ├── Conflict              conflict             the job's state does not allow it
    │   └── IdempotencyKeyReused  idempotency_key_reused  the key names a job made from a
    │                                              different request (details: its job_id)
    ├── Unauthorized          unauthorized         no valid credential
    ├── Forbidden             forbidden            a credential without the needed role
    ├── TooManyRequests       too_many_requests    a per-principal limit is reached (streams,
    │   │                                          MCP sessions)
    │   └── QuotaExceeded     rate_limited         a submit past one of the owner's quotas
    │                                              (details name it; `retry_after` seconds)
    └── ServiceUnavailable    service_unavailable  the broker or the store cannot be reached

    SettingsError             (not a SkillqError)  a bad settings file: start-up stops with
                                                   one line (a row in the CLI table only)

Outages are translated where they happen: the store's driver errors in
`skillq.storage.database.in_connection`, the broker's in the coordinator's enqueue.

The three tables, one row per class above (tests/test_error_tables.py fails while a class
lacks a row in any of them):

    REST   `skillq.api.errors.HTTP_STATUS`       class -> HTTP status; the app's exception
                                                 handlers build every `{"error": ...}` envelope
    MCP    `skillq.api.mcp.errors.JSONRPC_CODES` class -> JSON-RPC error code; a tools/call
                                                 answers any of them as a tool error instead
    CLI    `skillq.cli.exit_status.EXIT_STATUS`  class -> exit status (README: 2, 3, 4, 5)

A new kind of error is a subclass here with its own `code`, plus one row in each table.
A subclass defined elsewhere (the engine's `SkillError`) takes its nearest ancestor's rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

Row = TypeVar("Row")


class SkillqError(Exception):
    """`details`: JSON-ready data a client can act on, e.g. `[{"path", "message"}, ...]`."""

    code = "internal_error"

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(SkillqError):
    code = "invalid_request"


class InvalidParams(SkillqError):
    code = "invalid_params"


class UnknownJobType(SkillqError):
    code = "unknown_job_type"


class NotFound(SkillqError):
    code = "not_found"


class Conflict(SkillqError):
    code = "conflict"


class IdempotencyKeyReused(Conflict):
    """The idempotency key already names a job of a different request; details name it."""

    code = "idempotency_key_reused"


class Unauthorized(SkillqError):
    code = "unauthorized"


class Forbidden(SkillqError):
    code = "forbidden"


class TooManyRequests(SkillqError):
    code = "too_many_requests"


class QuotaExceeded(TooManyRequests):
    """A submit past a per-owner quota (`[quotas]`); `retry_after`: seconds worth waiting."""

    code = "rate_limited"

    def __init__(self, message: str, details: Any = None, *, retry_after: int = 10) -> None:
        super().__init__(message, details)
        self.retry_after = retry_after


class ServiceUnavailable(SkillqError):
    code = "service_unavailable"


def row_of(table: Mapping[type[BaseException], Row], error: BaseException) -> Row:
    """`error`'s row in a surface's table: its own class's, else its nearest ancestor's."""
    for cls in type(error).__mro__:
        if cls in table:
            return table[cls]
    raise LookupError(f"no row for {type(error).__name__}")


class SettingsError(Exception):
    """A settings problem, rendered as one line so it reads well in logs and on a terminal."""

    def __init__(self, problem: str, key: str | None = None, source: Path | str | None = None):
        super().__init__(problem)
        self.problem = problem
        self.key = key
        self.source = source

    def __str__(self) -> str:
        where = f"settings error in {self.source}" if self.source else "settings error"
        text = f"{where}: {self.key}: {self.problem}" if self.key else f"{where}: {self.problem}"
        return " ".join(text.splitlines())
