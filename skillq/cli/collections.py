"""`skillq collections migrate`, and the collections the CLI's `search` reads.

With a PostgreSQL store the collections are in the database, so a CLI command that reads
them binds the store first, as the API and the workers do at start-up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from skillq.errors import InvalidRequest

collections_app = typer.Typer(help="Search collections.", no_args_is_help=True)


def collections_of(settings: Any) -> Any:
    """The deployment's collections; with PostgreSQL, binds (and upgrades) the store first."""
    from skillq.engine.search_backend import open_collections

    if settings.storage.backend == "postgres":
        _bind_store(settings)
    return open_collections(settings.storage.backend, settings.search)


def _bind_store(settings: Any) -> None:
    from skillq.storage import bind_database, open_database
    from skillq.storage.migrations import ensure_schema

    storage = settings.storage
    bind_database(open_database(storage.backend, **storage.database_args()))
    ensure_schema()


@collections_app.command("migrate")
def migrate(
    source: Annotated[
        Path | None,
        typer.Option("--from", help="Folder of SQLite collection files [default: search.path]."),
    ] = None,
) -> None:
    """Copy the SQLite collection files into the PostgreSQL store (re-runnable; the files
    stay where they are)."""
    from skillq.cli.skills import _settings
    from skillq.engine.collection_migration import copy_files_into_store

    settings = _settings()
    if settings.storage.backend != "postgres":
        raise InvalidRequest(
            "the store is SQLite, where collections are the files themselves; "
            'set [storage] backend = "postgres" first'
        )
    root = source if source is not None else settings.search.path
    if not Path(root).is_dir():
        raise InvalidRequest(f"no folder {root}")
    reports = copy_files_into_store(Path(root), collections_of(settings))
    typer.echo(json.dumps([report.to_dict() for report in reports], indent=2))
    if any(report.error for report in reports):
        raise typer.Exit(1)
