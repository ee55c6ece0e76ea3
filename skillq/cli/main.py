"""The `skillq` command: run the system (`up`, `api`, `worker`, `scheduler`), manage jobs and
the store's schema.

Commands that touch jobs go through the same coordinator as the REST API. `--settings`
is exported as `SKILLQ_SETTINGS`, so every child process and `import actors` read the
same file. Commands raise skillq's errors; `main` ends any of them with the exit status
of `skillq.cli.exit_status`.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import typer.core

from skillq.cli.auth import auth_app
from skillq.cli.exit_status import report
from skillq.cli.jobs import jobs_app
from skillq.cli.output import print_json, print_rows
from skillq.cli.schedule_check import CHECKED_ON_IMPORT, refuse_bad_schedules
from skillq.errors import ServiceUnavailable, SkillqError
from skillq.log_output import configure_logging
from skillq.settings import ENV_VAR, Settings, SettingsError, load_settings


class _ReportedErrors(typer.core.TyperGroup):
    """Every command's skillq error leaves through the one exit-status table, however the app
    is invoked (the console script, `python -m skillq`, or click's test runner); an outage
    of the local store comes with a hint naming the store and the settings file."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (SkillqError, SettingsError) as error:
            local = isinstance(error, ServiceUnavailable) and not getattr(error, "remote", False)
            raise typer.Exit(report(error, hint=store_hint() if local else None)) from None
        except Exception as error:
            # Commands that open the store themselves (db, auth, workers) meet its driver's
            # errors.
            from skillq.storage.database import STORE_OUTAGES

            if not isinstance(error, STORE_OUTAGES):
                raise
            problem = " ".join(str(error).split())
            outage = ServiceUnavailable(f"the job store is unavailable: {problem}")
            raise typer.Exit(report(outage, hint=store_hint())) from None


app = typer.Typer(
    cls=_ReportedErrors,
    help="skillq: background jobs for AI tool servers.",
    no_args_is_help=True,
)
db_app = typer.Typer(help="The job store's schema version.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(db_app, name="db")
app.add_typer(auth_app, name="auth")
workers_app = typer.Typer(help="The worker processes in the registry.", no_args_is_help=True)
app.add_typer(workers_app, name="workers")


def _settings() -> Settings:
    return load_settings()


@app.callback()
def configure(
    ctx: typer.Context,
    settings: Annotated[
        Path | None, typer.Option("--settings", help="Settings file (else $SKILLQ_SETTINGS).")
    ] = None,
) -> None:
    # Fail on bad settings here (one line, exit 2: see `main`), before any command does work;
    # a schedule that could never fire is a bad setting too, for every command.
    loaded = load_settings(settings)
    if ctx.invoked_subcommand not in CHECKED_ON_IMPORT:
        refuse_bad_schedules(loaded)
    if settings is not None:
        os.environ[ENV_VAR] = str(settings.resolve())
    configure_logging(loaded.logging.format, loaded.logging.level)


@app.command()
def up(
    workers: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
    scheduler: Annotated[bool, typer.Option(help="Also run the scheduler.")] = True,
) -> None:
    """Run the API, the worker(s) and the scheduler until Ctrl-C or SIGTERM."""
    from skillq.cli.supervisor import Child, Supervisor, python_command

    settings = _settings()
    _upgrade_schema()
    processes = workers or settings.workers.processes
    children = [
        Child("api", python_command("-m", "skillq", "api")),
        Child("worker", python_command("-m", "skillq", "worker", "--processes", str(processes))),
    ]
    if scheduler:
        children.append(Child("scheduler", python_command("-m", "skillq", "scheduler")))
    typer.echo(f"skillq API on http://{settings.server.host}:{settings.server.port}")
    # Children get their own grace period first; the supervisor waits a little longer.
    grace = settings.workers.shutdown_grace_secs + 10
    raise typer.Exit(Supervisor(children, grace_secs=grace).run())


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
    workers: Annotated[
        int, typer.Option(help="API processes; above 1, set [mcp] stateless = true.")
    ] = 1,
) -> None:
    """Serve the REST API with uvicorn."""
    import uvicorn

    settings = _settings()
    if workers > 1 and settings.mcp.enabled and not settings.mcp.stateless:
        typer.echo(
            "warning: MCP sessions live in one process; with --workers > 1 set "
            "[mcp] stateless = true (and route legacy SSE to a single process)",
            err=True,
        )
    uvicorn.run(
        "skillq.api.app:create_app",
        factory=True,
        host=host or settings.server.host,
        port=port or settings.server.port,
        workers=workers,
        log_level=settings.logging.level,
        # Not uvicorn's own handlers: its records go through the root logger's, in the format
        # `[logging]` asks for (set again in each API process, see skillq.actors.process).
        log_config=None,
        # On SIGTERM, open requests and event streams get this long to finish.
        timeout_graceful_shutdown=max(1, int(settings.workers.shutdown_grace_secs)),
        # One log line per request costs measurable latency; errors are still logged.
        access_log=False,
        # Bounds on what one client can hold: open connections (closed past the limit,
        # requests 503), and the seconds a connection gets to send each request's headers.
        http="skillq.api.connection_limits:BoundedHttpProtocol",
        limit_concurrency=settings.server.limit_concurrency,
        timeout_keep_alive=settings.server.timeout_keep_alive_secs,
    )


#: Store connections a worker process uses besides its job threads' (heartbeat, cancellation
#: watcher, registry).
WORKER_SIDE_CONNECTIONS = 3


def worker_threads(settings: Settings) -> int:
    """One pool for every queue, as large as the per-queue thread counts together."""
    w = settings.workers
    return max(1, w.ai_workers + w.index_workers + w.skill_workers)


@app.command()
def worker(
    processes: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
    threads: Annotated[int | None, typer.Option(help="Threads per process.")] = None,
    queues: Annotated[list[str] | None, typer.Option("--queue", help="Only these queues.")] = None,
) -> NoReturn:
    """Run dramatiq workers for every job type (`dramatiq actors` with our settings)."""
    settings = _settings()
    thread_count = threads or worker_threads(settings)
    if thread_count + WORKER_SIDE_CONNECTIONS > settings.storage.pool_size:
        typer.echo(
            f"warning: storage.pool_size ({settings.storage.pool_size}) is below the worker's"
            f" {thread_count} threads + {WORKER_SIDE_CONNECTIONS}: running jobs hold a store"
            " connection each, so jobs and heartbeats will wait for one; raise pool_size",
            err=True,
        )
    command = [
        sys.executable,
        "-m",
        "dramatiq",
        "skillq.actors",
        "--processes",
        str(processes or settings.workers.processes),
        "--threads",
        str(thread_count),
        # On SIGTERM: stop fetching, let running jobs finish this long, then requeue the rest.
        "--worker-shutdown-timeout",
        str(int(settings.workers.shutdown_grace_secs * 1000)),
    ]
    if queues:
        command += ["--queues", *queues]
    os.execv(sys.executable, command)


@app.command()
def mcp() -> None:
    """Serve MCP over stdin/stdout for a local client, on the same store and broker."""
    from skillq.api.mcp import serve_stdio

    serve_stdio()


@app.command()
def scheduler() -> None:
    """Run the periodiq scheduler that enqueues periodic jobs."""
    import periodiq

    # periodiq leaves SIGTERM at its default, which ends the process without running exit
    # hooks (truncating the SQLite WALs among them); stop it as a clean exit instead.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    # periodiq has no `python -m` entry; its console entry point reads sys.argv.
    sys.argv = ["periodiq", "skillq.actors"]
    periodiq.entrypoint()


def _exit_on_signal(signum: int, frame: object) -> NoReturn:
    raise SystemExit(0)


@workers_app.command("status")
def workers_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the registered worker processes: alive, stopped, or dead (no heartbeat)."""
    from skillq.jobs.workers import worker_list

    settings = _settings()
    _upgrade_schema()
    listed = worker_list(settings.workers.dead_after_secs)
    if as_json:
        print_json(listed)
        return
    rows = [
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
    ]
    counts = listed["counts"]
    print_rows(
        ("id", "status", "queues", "threads", "jobs", "started", "last beat"),
        rows,
        footer=f"{counts['alive']} alive, {counts['dead']} dead, {counts['stopped']} stopped",
    )


def _bind_store() -> None:
    from skillq.storage import bind_database, open_database

    storage = _settings().storage
    bind_database(open_database(storage.backend, **storage.database_args()))


def _upgrade_schema() -> list[int]:
    from skillq.storage.migrations import upgrade

    _bind_store()
    return upgrade()


@db_app.command("upgrade")
def db_upgrade(
    to: Annotated[int | None, typer.Option("--to", help="Target version.")] = None,
) -> None:
    """Apply pending schema migrations."""
    from skillq.storage.migrations import upgrade

    _bind_store()
    applied = upgrade(to)
    typer.echo(f"applied {applied}" if applied else "already up to date")


@db_app.command("downgrade")
def db_downgrade(
    to: Annotated[int, typer.Option("--to", help="Target version (0 drops everything).")],
) -> None:
    """Undo schema migrations above a version."""
    from skillq.storage.migrations import downgrade

    _bind_store()
    undone = downgrade(to)
    typer.echo(f"undid {undone}" if undone else "nothing to undo")


@db_app.command("status")
def db_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the schema version and any pending migrations."""
    from skillq.storage.migrations import schema_status

    _bind_store()
    status = schema_status()
    if as_json:
        pending = [{"version": v, "description": d} for v, d in status.pending]
        print_json({"current": status.current, "latest": status.latest, "pending": pending})
        return
    typer.echo(f"schema version {status.current} of {status.latest}")
    for version, description in status.pending:
        typer.echo(f"  pending {version}: {description}")


def _register_skill_engine() -> None:
    from skillq.cli.skills import register

    register(app)


_register_skill_engine()


def store_hint() -> str:
    """Where the local commands look for the store, for an error saying it is unavailable."""
    from urllib.parse import urlsplit

    try:
        settings = _settings()
    except SettingsError:
        return ""
    storage = settings.storage
    if storage.backend == "postgres" and storage.url:
        parts = urlsplit(storage.url)  # no user or password: they may be secret
        where = f"postgres at {parts.hostname}:{parts.port or 5432}{parts.path}"
    else:
        where = f"sqlite at {storage.path}"
    source = settings.source or "none (built-in defaults)"
    return f"the store is {where}; settings file: {source} (--settings or ${ENV_VAR})"


def main() -> None:
    app()
