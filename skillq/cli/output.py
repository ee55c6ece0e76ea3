"""How read commands print: a table for a person at a terminal, plain lines for a script.

A table on a narrow terminal would shorten long cells with an ellipsis; ids are what a
script or a person copies into the next command, so the first column (the id or name) is
never shortened, whatever the width. Piped, a command prints one tab-separated line per
row, without header or footer, every value whole: `skillq jobs list | cut -f1` is a list
of ids. `--json` prints the same data as JSON instead, for any reader.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import typer


def on_terminal() -> bool:
    """Whether stdout is a terminal (a person), not a pipe or a file (a script)."""
    return sys.stdout.isatty()


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def print_rows(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], *, footer: str | None = None
) -> None:
    """A table on a terminal (the first column whole), else tab-separated lines."""
    cells = [["" if value is None else str(value) for value in row] for row in rows]
    if not on_terminal():
        for row in cells:
            typer.echo("\t".join(row))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    key_width = max((len(row[0]) for row in cells), default=len(columns[0]))
    table.add_column(columns[0], no_wrap=True, min_width=max(key_width, len(columns[0])))
    for name in columns[1:]:
        table.add_column(name, overflow="fold")
    for row in cells:
        table.add_row(*row)
    console = Console()
    console.print(table)
    if footer:
        console.print(footer)
