"""One error hierarchy for every way into skillq.

The coordinator raises these; the REST layer (status code and error envelope), the CLI
(exit code) and MCP (tool error) each map them to their own form in exactly one place.

    SkillqError
    ├── InvalidRequest        400  the request itself is malformed
    ├── InvalidParams         422  well-formed, but breaks a schema (details list the paths)
    ├── UnknownJobType        422  no job type of that name
    ├── NotFound              404  no such job (or not the caller's)
    ├── Conflict              409  the job's state does not allow it
    │   └── IdempotencyKeyReused   409  the key names a job made from a different request
    ├── Unauthorized          401
    ├── Forbidden             403
    └── ServiceUnavailable    503  the broker or the store cannot be reached

    SettingsError                   a bad settings file: start-up stops with one line, exit 2
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class SkillqError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(SkillqError):
    status_code = 400
    code = "invalid_request"


class InvalidParams(SkillqError):
    status_code = 422
    code = "invalid_params"


class UnknownJobType(SkillqError):
    status_code = 422
    code = "unknown_job_type"


class NotFound(SkillqError):
    status_code = 404
    code = "not_found"


class Conflict(SkillqError):
    status_code = 409
    code = "conflict"


class IdempotencyKeyReused(Conflict):
    """The idempotency key already names a job of a different request; details name it."""

    code = "idempotency_key_reused"


class Unauthorized(SkillqError):
    status_code = 401
    code = "unauthorized"


class Forbidden(SkillqError):
    status_code = 403
    code = "forbidden"


class ServiceUnavailable(SkillqError):
    status_code = 503
    code = "service_unavailable"


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
