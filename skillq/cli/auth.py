"""`skillq auth`: API keys (create, list, revoke), locally minted JWTs, and worker tokens
(`skillq.cli.worker_tokens`).

A key is printed once, at creation, and only its digest is stored; `list` shows names,
roles and dates, never a key. Errors are raised and end the command with
`skillq.cli.exit_status`'s status.
"""

from __future__ import annotations

import re
from typing import Annotated

import peewee
import typer

from skillq.cli.worker_tokens import worker_token_app
from skillq.errors import Conflict, InvalidParams, InvalidRequest, NotFound
from skillq.settings import Settings, load_settings

ROLE_NAMES = ("admin", "submitter", "viewer")
_TTL = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<unit>[smhd]?)")
_UNIT_SECS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

auth_app = typer.Typer(help="API keys and tokens.", no_args_is_help=True)
api_key_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
token_app = typer.Typer(help="Mint JWTs signed with auth.jwt.secret.", no_args_is_help=True)
auth_app.add_typer(api_key_app, name="api-key")
auth_app.add_typer(token_app, name="token")
auth_app.add_typer(worker_token_app, name="worker-token")


def _settings() -> Settings:
    return load_settings()


def _open_store() -> None:
    from skillq.storage import bind_database, open_database
    from skillq.storage.migrations import ensure_schema

    storage = _settings().storage
    bind_database(open_database(storage.backend, **storage.database_args()))
    ensure_schema()


def _check_role(role: str) -> str:
    if role not in ROLE_NAMES:
        raise InvalidParams(f"--role must be one of {', '.join(ROLE_NAMES)} (got {role!r})")
    return role


def parse_ttl(text: str) -> float:
    """`90`, `90s`, `30m`, `8h`, `7d` → seconds."""
    match = _TTL.fullmatch(text.strip())
    if match is None or float(match["number"]) <= 0:
        raise ValueError(f"--ttl must be a positive number with s, m, h or d (got {text!r})")
    return float(match["number"]) * _UNIT_SECS[match["unit"]]


@api_key_app.command("create")
def api_key_create(
    name: Annotated[str, typer.Argument(help="Who the key is for; owns the jobs it submits.")],
    role: Annotated[str, typer.Option(help="admin, submitter or viewer.")] = "submitter",
) -> None:
    """Create a key and print it (the only time it is shown)."""
    from skillq.storage.api_keys import create_key

    _check_role(role)
    if not name.strip() or len(name) > 200:
        raise InvalidParams("NAME must be 1-200 characters")
    _open_store()
    try:
        _, key = create_key(name, role)
    except peewee.IntegrityError:
        raise Conflict(f"an API key named {name!r} exists (names are never reused)") from None
    typer.echo(key)


@api_key_app.command("revoke")
def api_key_revoke(name: Annotated[str, typer.Argument(help="The key's name.")]) -> None:
    """Revoke a key at once; requests with it get 401."""
    from skillq.storage.api_keys import revoke_key

    _open_store()
    if not revoke_key(name):
        raise NotFound(f"no active API key named {name!r}")
    typer.echo(f"revoked {name}")


@api_key_app.command("list")
def api_key_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every key's name, role and dates (never the key)."""
    from skillq.cli.output import print_json, print_rows
    from skillq.storage.api_keys import list_keys

    _open_store()
    keys = [
        {
            "name": row.name,
            "role": row.role,
            "created_at": row.created_at.isoformat(timespec="seconds"),
            "revoked_at": row.revoked_at.isoformat(timespec="seconds") if row.revoked else None,
        }
        for row in list_keys()
    ]
    if as_json:
        print_json(keys)
        return
    rows = [
        (
            key["name"],
            key["role"],
            f"created {key['created_at']}",
            f"revoked {key['revoked_at']}" if key["revoked_at"] else "",
        )
        for key in keys
    ]
    print_rows(("name", "role", "created", "revoked"), rows)


@token_app.command("create")
def token_create(
    sub: Annotated[str, typer.Option("--sub", help="The subject: owns the jobs it submits.")],
    role: Annotated[list[str], typer.Option(help="admin, submitter or viewer (repeatable).")],
    ttl: Annotated[str | None, typer.Option(help="Lifetime: 90s, 30m, 8h, 7d.")] = None,
) -> None:
    """Print an HS256 token for auth.mode = "jwt" (default lifetime auth.jwt.expiry_hours)."""
    from skillq.tokens import mint_token

    roles = [_check_role(r) for r in role]
    settings = _settings()
    try:
        ttl_secs = None if ttl is None else parse_ttl(ttl)
        typer.echo(mint_token(settings.auth.jwt, sub, roles, ttl_secs))
    except ValueError as error:
        raise InvalidRequest(str(error)) from None
