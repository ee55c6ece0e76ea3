"""The `skillq` command: run the system (`up`, `api`, `worker`, `scheduler`), manage jobs and
the store's schema.

Commands that touch jobs go through the same coordinator as the REST API. `--settings`
is exported as `SKILLQ_SETTINGS`, so every child process and `import actors` read the
same file. Commands raise skillq's errors; `main` ends any of them with the exit status
of `skillq.cli.exit_status`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from skillq.cli.auth import auth_app
from skillq.cli.exit_status import JOB_NOT_COMPLETED, report
from skillq.cli.schedule_check import CHECKED_ON_IMPORT, refuse_bad_schedules
from skillq.cli.workers import workers_app
from skillq.errors import InvalidRequest, ServiceUnavailable, SkillqError
from skillq.settings import ENV_VAR, Settings, SettingsError, load_settings

app = typer.Typer(help="skillq: background jobs for AI tool servers.", no_args_is_help=True)
jobs_app = typer.Typer(help="Submit, list and inspect jobs.", no_args_is_help=True)
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


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
        log_level="info",
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


@app.command()
def worker(
    processes: Annotated[int | None, typer.Option(help="Worker processes per queue.")] = None,
    threads: Annotated[
        int | None, typer.Option(help="Threads per process (default: the queue's setting).")
    ] = None,
    queues: Annotated[list[str] | None, typer.Option("--queue", help="Only these queues.")] = None,
) -> None:
    """Run a worker pool per queue; with one --queue, exactly that queue's dramatiq workers."""
    settings = _settings()
    if threads is not None and threads < 1:
        raise InvalidRequest(f"--threads must be at least 1 (got {threads})")
    if queues and len(queues) == 1:
        _exec_pool(settings, queues[0], processes=processes, threads=threads)
    else:
        code = _run_pools(settings, [], processes=processes, queues=queues, threads=threads)
        raise typer.Exit(code)


def _exec_pool(
    settings: Settings, queue: str, *, processes: int | None, threads: int | None
) -> NoReturn:
    """Become `dramatiq skillq.actors --queues QUEUE`: one queue's pool, nothing else."""
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
        sys.executable,
        "-m",
        "dramatiq",
        "skillq.actors",
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


def _coordinator() -> Any:
    from skillq import actors
    from skillq.jobs.coordinator import JobCoordinator

    return JobCoordinator(actors.broker, actors.settings)


@jobs_app.command("submit")
def jobs_submit(
    job_type: Annotated[str, typer.Argument(metavar="TYPE", help="Job type, e.g. sleep.")],
    params: Annotated[str, typer.Option(help="Parameters as a JSON object.")] = "{}",
    priority: Annotated[str | None, typer.Option(help="0-10, or low/normal/high.")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the job and show its progress.")] = False,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="At most one job per key; the same request again shows that job."),
    ] = None,
) -> None:
    """Submit a job; prints its id (or, with --wait, its final state)."""
    from skillq.jobs.fields import job_to_dict
    from skillq.json_values import parse_json

    parsed_params = parse_json(params, "--params")
    request: dict[str, Any] = {"type": job_type, "params": parsed_params}
    if priority is not None:
        request["priority"] = int(priority) if priority.isdigit() else priority
    if idempotency_key is not None:
        request["idempotency_key"] = idempotency_key
    coordinator = _coordinator()
    # The CLI is the operator's, beside the store and the settings: as an admin.
    job = coordinator.submit_job(request, any_owner=True).job
    if not wait:
        typer.echo(job.id)
        return
    job = _wait_for(coordinator, job.id)
    typer.echo(json.dumps(job_to_dict(job), indent=2))
    if job.state != "completed":
        raise typer.Exit(JOB_NOT_COMPLETED)


def _wait_for(coordinator: Any, job_id: str) -> Any:
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(job_id, total=1.0)
        while True:
            job = coordinator.get_job(job_id)
            bar.update(task, completed=job.progress or 0.0, description=job.message or job.state)
            if job.job_state.is_terminal:
                return job
            time.sleep(0.2)


@jobs_app.command("list")
def jobs_list(
    state: Annotated[list[str] | None, typer.Option(help="Filter by state.")] = None,
    job_type: Annotated[list[str] | None, typer.Option("--type", help="Filter by type.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (1-100).")] = 20,
    offset: Annotated[int, typer.Option(help="Skip this many.")] = 0,
) -> None:
    """List jobs, newest first."""
    from rich.console import Console
    from rich.table import Table

    page = _coordinator().list_jobs(states=state, types=job_type, limit=limit, offset=offset)
    table = Table("id", "type", "state", "progress", "attempts", "created")
    for job in page.jobs:
        progress = "" if job.progress is None else f"{job.progress:.0%}"
        created = job.created_at.isoformat(timespec="seconds")
        table.add_row(job.id, job.type, job.state, progress, str(job.attempts), created)
    console = Console()
    console.print(table)
    console.print(f"{len(page.jobs)} of {page.total} jobs")


@jobs_app.command("show")
def jobs_show(job_id: Annotated[str, typer.Argument(help="Job id.")]) -> None:
    """Show one job as JSON."""
    from skillq.jobs.fields import job_to_dict

    coordinator = _coordinator()
    job = coordinator.get_job(job_id)
    position = coordinator.position_in_queue(job)
    typer.echo(json.dumps(job_to_dict(job, position_in_queue=position), indent=2))


@jobs_app.command("cancel")
def jobs_cancel(job_id: Annotated[str, typer.Argument(help="Job id.")]) -> None:
    """Cancel a job: a pending one at once, a running one by its worker (within a second)."""
    from skillq.jobs.fields import job_to_dict

    job = _coordinator().cancel_job(job_id)
    typer.echo(json.dumps(job_to_dict(job), indent=2))


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
def db_status() -> None:
    """Show the schema version and any pending migrations."""
    from skillq.storage.migrations import schema_status

    _bind_store()
    status = schema_status()
    typer.echo(f"schema version {status.current} of {status.latest}")
    for version, description in status.pending:
        typer.echo(f"  pending {version}: {description}")


def _register_skill_engine() -> None:
    from skillq.cli.skills import register

    register(app)


_register_skill_engine()


def main() -> None:
    try:
        app()
    except (SkillqError, SettingsError) as error:
        sys.exit(report(error))
    except Exception as error:
        # Commands that open the store themselves (db, auth, workers) meet its driver's errors.
        from skillq.storage.database import STORE_OUTAGES

        if not isinstance(error, STORE_OUTAGES):
            raise
        problem = " ".join(str(error).split())
        sys.exit(report(ServiceUnavailable(f"the job store is unavailable: {problem}")))
