"""`skillq auth worker-token`: tokens for remote workers (create, list, revoke).

A token names the queues its workers may take jobs from and the capabilities they may claim;
it is printed once, at creation, and only its digest is stored, as for API keys.
"""

from __future__ import annotations

import re
from typing import Annotated

import peewee
import typer

from skillq.errors import Conflict, InvalidParams, NotFound

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")

worker_token_app = typer.Typer(
    help="Tokens for remote workers (`skillq worker --remote`).", no_args_is_help=True
)


def _names(text: str, option: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    bad = [name for name in names if not _NAME.fullmatch(name)]
    if bad:
        raise InvalidParams(f"{option}: not a name: {', '.join(map(repr, bad))}")
    return names


def _open_store() -> None:
    from skillq.cli.auth import _open_store as open_store

    open_store()


@worker_token_app.command("create")
def worker_token_create(
    name: Annotated[str, typer.Argument(help="The token's name (its workers' label).")],
    queues: Annotated[str, typer.Option(help="Comma-separated queues, e.g. skill,index.")],
    capabilities: Annotated[
        str, typer.Option(help="Comma-separated capabilities its workers may claim, e.g. gpu.")
    ] = "",
) -> None:
    """Create a worker token and print it (the only time it is shown)."""
    from skillq.storage.worker_tokens import create_token

    if not _NAME.fullmatch(name):
        raise InvalidParams("NAME must be 1-100 letters, digits, '_', '.' or '-'")
    queue_names = _names(queues, "--queues")
    if not queue_names:
        raise InvalidParams("--queues must name at least one queue")
    _open_store()
    try:
        _, token = create_token(name, queue_names, _names(capabilities, "--capabilities"))
    except peewee.IntegrityError:
        raise Conflict(f"a worker token named {name!r} exists (names are never reused)") from None
    typer.echo(token)


@worker_token_app.command("revoke")
def worker_token_revoke(name: Annotated[str, typer.Argument(help="The token's name.")]) -> None:
    """Revoke a token at once: its workers' requests get 401 and their leases run out."""
    from skillq.storage.worker_tokens import revoke_token

    _open_store()
    if not revoke_token(name):
        raise NotFound(f"no active worker token named {name!r}")
    typer.echo(f"revoked {name}")


@worker_token_app.command("list")
def worker_token_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every token's name, queues, capabilities and dates (never the token)."""
    from skillq.cli.output import print_json, print_rows
    from skillq.storage.worker_tokens import list_tokens

    _open_store()
    tokens = [
        {
            "name": row.name,
            "queues": row.queues,
            "capabilities": row.capabilities,
            "created_at": row.created_at.isoformat(timespec="seconds"),
            "revoked_at": row.revoked_at.isoformat(timespec="seconds") if row.revoked else None,
        }
        for row in list_tokens()
    ]
    if as_json:
        print_json(tokens)
        return
    rows = [
        (
            token["name"],
            ",".join(token["queues"]),
            ",".join(token["capabilities"]) or "-",
            f"created {token['created_at']}",
            f"revoked {token['revoked_at']}" if token["revoked_at"] else "",
        )
        for token in tokens
    ]
    print_rows(("name", "queues", "capabilities", "created", "revoked"), rows)
