"""The CLI's errors: the exit status of each core error, for scripts that call `skillq`.

Commands raise skillq's errors (their own, or the coordinator's); `skillq.cli.main.main`
catches any that ends a command and `report`s it: one line on stderr (and one per detail),
then the status from `EXIT_STATUS`, as the README documents it: 2 for a bad request or bad
settings, 3 not found, 4 conflict, 5 service unavailable, 6 over a quota (`[quotas]`), 1
for anything else.
"""

from __future__ import annotations

import typer

from skillq.errors import (
    Conflict,
    Forbidden,
    IdempotencyKeyReused,
    InvalidParams,
    InvalidRequest,
    NotFound,
    QuotaExceeded,
    ServiceUnavailable,
    SettingsError,
    SkillqError,
    TooManyRequests,
    Unauthorized,
    UnknownJobType,
    row_of,
)

#: The exit status of each core error: one row per class of `skillq.errors`.
EXIT_STATUS: dict[type[Exception], int] = {
    SkillqError: 1,
    InvalidRequest: 2,
    InvalidParams: 2,
    UnknownJobType: 2,
    NotFound: 3,
    Conflict: 4,
    # Only with --url (a server's answer): the message names the credential to give.
    Unauthorized: 1,
    IdempotencyKeyReused: 4,
    Forbidden: 1,
    TooManyRequests: 5,
    # Over a quota (`[quotas]`): try again later, as the message says.
    QuotaExceeded: 6,
    ServiceUnavailable: 5,
    SettingsError: 2,
}

#: `--wait` (and the skill commands, which wait by default): the job ended, but not completed.
JOB_NOT_COMPLETED = 1


def report(error: SkillqError | SettingsError, hint: str | None = None) -> int:
    """Tell the user about `error` on stderr (and `hint`, what to check); the exit status it
    calls for."""
    if isinstance(error, SettingsError):
        # Already one self-describing line: "settings error in FILE: key: problem".
        typer.echo(str(error), err=True)
    else:
        typer.echo(f"error: {error.message}", err=True)
        for detail in error.details or []:
            if isinstance(detail, dict):
                typer.echo(f"  {detail.get('path', '')}: {detail.get('message', '')}", err=True)
    if hint:
        typer.echo(f"hint: {hint}", err=True)
    return row_of(EXIT_STATUS, error)
