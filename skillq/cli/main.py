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
from skillq.cli.output import print_json
from skillq.cli.schedule_check import CHECKED_ON_IMPORT, refuse_bad_schedules
from skillq.cli.workers import workers_app
from skillq.errors import InvalidRequest, ServiceUnavailable, SkillqError
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
    workers: Annotated[int | None, typer.Option(help="Worker processes per queue.")] = None,
    scheduler: Annotated[bool, typer.Option(help="Also run the scheduler.")] = True,
) -> None:
    """Run the API, a worker pool per queue and the scheduler until Ctrl-C or SIGTERM."""
    from skillq.cli.supervisor import Child, python_command

    settings = _settings()
    _upgrade_schema()
    children = [Child("api", python_command("-m", "skillq", "api"))]
    if scheduler:
        children.append(Child("scheduler", python_command("-m", "skillq", "scheduler")))
    typer.echo(f"skillq API on http://{settings.server.host}:{settings.server.port}")
    raise typer.Exit(_run_pools(settings, children, processes=workers))


def _run_pools(
    settings: Settings,
    others: list[Any],
    *,
    processes: int | None,
    queues: list[str] | None = None,
    threads: int | None = None,
) -> int:
    """Supervise one worker group per queue (resized by `workers scale`) beside `others`."""
    from skillq.cli.supervisor import Supervisor
    from skillq.cli.worker_pools import WorkerPools
    from skillq.cli.workers import declared_queues
    from skillq.jobs.pools import desired_threads

    declared = declared_queues()  # which also binds the store
    served = queues or declared

    def read_desired() -> dict[str, int]:
        # An explicit --threads fixes every pool's size: nothing to reconcile.
        if threads is not None:
            return dict.fromkeys(served, threads)
        return desired_threads(settings, served)

    pools = WorkerPools(
        read_desired(),
        processes=processes or settings.workers.processes,
        read_desired=read_desired,
    )
    # Children get their own grace period first; the supervisor waits a little longer.
    grace = settings.workers.shutdown_grace_secs + 10
    supervisor = Supervisor(
        [*others, *pools.children()],
        grace_secs=grace,
        reconcile=pools,
        reconcile_every_secs=POOL_POLL_SECS,
    )
    return supervisor.run()


#: How often a supervisor reads the desired pool sizes from the store.
POOL_POLL_SECS = 2.0


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


#: Store connections a worker process uses besides its job threads' (heartbeat, stale-job
#: recovery, cancellation watcher, registry).
WORKER_SIDE_CONNECTIONS = 4


@app.command()
def worker(
    processes: Annotated[int | None, typer.Option(help="Worker processes per queue.")] = None,
    threads: Annotated[
        int | None, typer.Option(help="Threads per process (default: the queue's setting).")
    ] = None,
    queues: Annotated[list[str] | None, typer.Option("--queue", help="Only these queues.")] = None,
    remote: Annotated[
        str | None, typer.Option(help="Run as a remote worker of the API at this URL.")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="SKILLQ_WORKER_TOKEN", help="The worker token (with --remote)."),
    ] = None,
    capabilities: Annotated[
        str | None, typer.Option(help="With --remote: capabilities it has, e.g. gpu.")
    ] = None,
    skills: Annotated[
        str | None, typer.Option(help="With --remote: the only skills it runs, e.g. a,b.")
    ] = None,
) -> None:
    """Run a worker pool per queue; with one --queue, exactly that queue's dramatiq workers;
    with --remote, a worker that reaches only the API (its token names the queues)."""
    settings = _settings()
    if threads is not None and threads < 1:
        raise InvalidRequest(f"--threads must be at least 1 (got {threads})")
    if remote is not None:
        _run_remote(remote, token, threads or 1, capabilities, skills)
        return
    if queues and len(queues) == 1:
        _exec_pool(settings, queues[0], processes=processes, threads=threads)
    else:
        code = _run_pools(settings, [], processes=processes, queues=queues, threads=threads)
        raise typer.Exit(code)


def _run_remote(
    url: str, token: str | None, threads: int, capabilities: str | None, skills: str | None
) -> None:
    from skillq.jobs.remote_runner import run_remote_worker

    if not token:
        raise InvalidRequest("--remote needs --token or SKILLQ_WORKER_TOKEN")
    if not url.startswith(("http://", "https://")):
        raise InvalidRequest(f"--remote must be an http:// or https:// URL (got {url!r})")

    def names(text: str | None) -> list[str] | None:
        return None if text is None else [n.strip() for n in text.split(",") if n.strip()]

    run_remote_worker(
        url, token, threads=threads, capabilities=names(capabilities), skills=names(skills)
    )


def _exec_pool(
    settings: Settings, queue: str, *, processes: int | None, threads: int | None
) -> NoReturn:
    """Become `dramatiq skillq.actors --queues QUEUE`: one queue's pool, nothing else."""
    import skillq
    from skillq.cli.supervisor import python_command
    from skillq.jobs.pools import configured_threads

    size = threads or configured_threads(settings, queue)
    if size < 1:
        raise InvalidRequest(f"the {queue} queue's pool has 0 threads in the settings")
    if size + WORKER_SIDE_CONNECTIONS > settings.storage.pool_size:
        typer.echo(
            f"warning: storage.pool_size ({settings.storage.pool_size}) is below the {queue}"
            f" pool's {size} threads + {WORKER_SIDE_CONNECTIONS}: running jobs hold a store"
            " connection each, so jobs and heartbeats will wait for one; raise pool_size",
            err=True,
        )
    command = [
        *python_command("-m", "dramatiq", "skillq.actors"),
        # dramatiq puts `--path` (default: the working directory) first on sys.path; point
        # it at where skillq is installed, for the reason `python_command` gives.
        "--path",
        str(Path(skillq.__file__).resolve().parent.parent),
        "--processes",
        str(processes or settings.workers.processes),
        "--threads",
        str(size),
        # On SIGTERM: stop fetching, let running jobs finish this long, then requeue the rest.
        "--worker-shutdown-timeout",
        str(int(settings.workers.shutdown_grace_secs * 1000)),
        "--queues",
        queue,
    ]
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
