"""`skillq workers`: the worker registry, and each queue's pool size (desired vs actual).

`workers status` also shows each job type's global limits beside their use now.
`workers scale skill=8 index=2` records desired sizes in the store; the supervisor of a
running `skillq up` (or `skillq worker`) applies them within a few seconds
(`skillq.cli.worker_pools`). `workers status` shows, per queue, the desired size beside
what the live worker processes in the registry run, then the processes themselves.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from skillq.cli.output import print_json, print_rows
from skillq.settings import Settings, load_settings

workers_app = typer.Typer(help="Worker processes and per-queue pools.", no_args_is_help=True)


def declared_queues() -> list[str]:
    """Every queue with a pool: the built-in ones and any a plugin's actors declare.

    For the supervisor, which must know them before any worker runs. Importing the actors
    also binds the store and brings its schema up to date.
    """
    from skillq import actors
    from skillq.jobs.pools import served_queues

    return served_queues(actor.queue_name for actor in actors.broker.actors.values())


def known_queues() -> list[str]:
    """The built-in queues and any other a registered worker serves (a plugin's).

    For `status` and `scale`, which only read and write the store: importing the actors
    would build the broker too, and a store outage must stay exit status 5.
    """
    from skillq.jobs.pools import registered_queues, served_queues
    from skillq.storage import bind_database, open_database
    from skillq.storage.migrations import ensure_schema

    storage = _settings().storage
    bind_database(open_database(storage.backend, **storage.database_args()))
    ensure_schema()
    return served_queues(registered_queues())


def _settings() -> Settings:
    return load_settings()


def type_limits(settings: Settings) -> dict[str, Any]:
    """Each limited job type's limits and use. Imports the actors (after `known_queues` has
    reached the store, so an outage is still exit status 5): a plugin's limits are declared
    with its actor. The built-in types declare none, so without settings or plugins there is
    nothing to import for."""
    import importlib.metadata

    from skillq.jobs.plugins import ENTRY_POINT_GROUP

    plugins = settings.jobs.modules or importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    if not settings.job_types and not plugins:
        return {}
    from skillq import actors
    from skillq.brokers.job_limits import limits_of
    from skillq.jobs.limits import limit_status
    from skillq.storage.database import in_connection

    return in_connection(limit_status)(limits_of(actors.broker))


def owner_limits(settings: Settings) -> dict[str, Any]:
    """The per-owner running limits and each owner's use ({} when none is set)."""
    from skillq.brokers.limit_rules import OwnerLimit
    from skillq.jobs.limits import owner_status
    from skillq.storage.database import in_connection

    return in_connection(owner_status)(OwnerLimit.of(settings.quotas))


def _rate(rate: dict[str, Any] | None) -> str:
    return "-" if rate is None else f"{rate['count']}/{rate['period_secs']:g}s"


@workers_app.command("status")
def workers_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Each queue's pool (desired vs actual), each limited job type's limits and use, the
    per-owner running limits and each owner's use, then the registered worker processes."""

    from skillq.jobs.pools import pool_status
    from skillq.jobs.workers import worker_list

    settings = _settings()
    queues = known_queues()
    listed = worker_list(settings.workers.dead_after_secs)
    pools = pool_status(settings, queues)
    limits = type_limits(settings)
    owners = owner_limits(settings)
    if as_json:
        print_json({**listed, **pools, "limits": limits, "owner_limits": owners})
        return
    print_rows(
        ("queue", "desired", "actual", "source"),
        [
            (
                pool["queue"],
                _size(pool["desired_threads"], pool["desired_processes"]),
                " + ".join(_threads(t) for t in pool["actual_threads"]) or "none",
                pool["source"],
            )
            for pool in pools["pools"]
        ],
    )
    if limits:
        print_rows(
            ("job type", "max concurrent", "running", "rate", "in window", "postponed", "total"),
            [
                (
                    name,
                    "-" if limit["max_concurrent"] is None else limit["max_concurrent"],
                    limit["running"],
                    _rate(limit["rate"]),
                    limit["started_in_window"],
                    limit["postponed"],
                    limit["postponed_total"],
                )
                for name, limit in limits.items()
            ],
        )
    if owners:
        caps = owners["types"]
        print_rows(
            ("owner", "running", "max running", "by type", "postponed"),
            [
                (
                    name,
                    use["running"],
                    "-" if owners["max_running"] is None else owners["max_running"],
                    " ".join(
                        f"{t}={n}/{caps.get(t, '-')}" for t, n in use["running_by_type"].items()
                    )
                    or "-",
                    use["postponed"],
                )
                for name, use in owners["owners"].items()
            ],
            footer="per-owner caps: max_running "
            + ("-" if owners["max_running"] is None else str(owners["max_running"]))
            + "".join(f", {t} {n}" for t, n in caps.items()),
        )
    counts = listed["counts"]
    print_rows(
        ("id", "status", "queues", "threads", "jobs", "started", "last beat"),
        [
            (
                row["id"],
                row["status"],
                ",".join(row["queues"]),
                row["threads"],
                row["jobs_running"],
                row["started_at"],
                row["last_beat_at"],
            )
            for row in listed["workers"]
        ],
        footer=f"{counts['alive']} alive, {counts['dead']} dead, {counts['stopped']} stopped",
    )


def _threads(count: int) -> str:
    return f"{count} thread" + ("" if count == 1 else "s")


def _size(threads: int, processes: int) -> str:
    if threads == 0:
        return "none"
    return f"{_threads(threads)} x {processes} process" + ("es" if processes > 1 else "")


@workers_app.command("scale")
def workers_scale(
    sizes: Annotated[
        list[str], typer.Argument(metavar="QUEUE=THREADS...", help="e.g. skill=8 index=2")
    ],
) -> None:
    """Set the threads per worker process of each named queue's pool (0 stops it).

    A running `skillq up` or `skillq worker` applies it within a few seconds, restarting
    that queue's workers gracefully; the new size lasts until scaled again.
    """
    from skillq.jobs.pools import parse_sizes, scale

    queues = known_queues()
    scale(parse_sizes(sizes), queues, updated_by="cli")
    for pair in sizes:
        typer.echo(f"desired {pair}")
