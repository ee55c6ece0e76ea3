"""`skillq jobs`: submit, list, show, cancel, retry and watch jobs.

Two ways to reach the jobs, one set of commands: `LocalJobs` goes through the same
coordinator as the REST API, on the store the settings name, as the operator (an admin);
`RemoteJobs` (with `--url`) goes through `skillq.client` to a server, as whoever the
credential names. Both hand back jobs as the REST API shows them (`GET /api/v1/jobs/{id}`),
so the output of a command is the same in either mode.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer

from skillq.cli.exit_status import JOB_NOT_COMPLETED
from skillq.cli.output import print_json, print_rows
from skillq.cli.remote import ApiKeyOption, Server, TokenOption, UrlOption, server_of
from skillq.errors import InvalidRequest

jobs_app = typer.Typer(
    help="Submit, list, inspect, cancel, retry and watch jobs.", no_args_is_help=True
)

ProgressCallback = Callable[[float | None, str | None], None]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
JobIdArgument = Annotated[str, typer.Argument(metavar="ID", help="Job id.")]

#: How often the local mode reads the store while watching a job (seconds).
POLL_SECS = 0.2


class LocalJobs:
    """The store the settings name, through the coordinator, as the local admin."""

    def __init__(self) -> None:
        from skillq.settings import load_settings
        from skillq.storage import bind_database, open_database
        from skillq.storage.database import database_proxy
        from skillq.storage.migrations import ensure_schema

        # Reach the store first: importing the actors would end an outage with its own
        # exit 2, where the CLI's is 5 with a hint naming the store and the settings file.
        # A process that has bound its store already (the CLI called in-process) keeps it.
        if database_proxy.obj is None:
            storage = load_settings().storage
            bind_database(open_database(storage.backend, **storage.database_args()))
            ensure_schema()

        from skillq import actors
        from skillq.jobs.coordinator import JobCoordinator

        self.coordinator = JobCoordinator(actors.broker, actors.settings)

    @staticmethod
    def _shown(job: Any, position: int | None = None) -> dict[str, Any]:
        from skillq.jobs.fields import job_to_dict

        return job_to_dict(job, position_in_queue=position)

    def submit(self, request: dict[str, Any]) -> dict[str, Any]:
        # The CLI is the operator's, beside the store and the settings: as an admin.
        return self._shown(self.coordinator.submit_job(request, any_owner=True).job)

    def submit_many(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        made = self.coordinator.submit_jobs(requests, any_owner=True)
        return [self._shown(submission.job) for submission in made]

    def page(
        self, states: list[str] | None, types: list[str] | None, limit: int, offset: int
    ) -> dict[str, Any]:
        page = self.coordinator.list_jobs(states=states, types=types, limit=limit, offset=offset)
        jobs = [self._shown(job) for job in page.jobs]
        return {"jobs": jobs, "total": page.total, "limit": limit, "offset": offset}

    def show(self, job_id: str) -> dict[str, Any]:
        job = self.coordinator.get_job(job_id)
        return self._shown(job, self.coordinator.position_in_queue(job))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._shown(self.coordinator.cancel_job(job_id))

    def retry(self, job_id: str) -> dict[str, Any]:
        return self._shown(self.coordinator.retry_job(job_id))

    def logs(self, job_id: str, since: int) -> dict[str, Any]:
        from skillq.jobs.logs import log_page_to_dict

        job, page = self.coordinator.read_logs(job_id, since=since)
        return log_page_to_dict(job.id, job.state, page)

    def watch(self, job_id: str, on_progress: ProgressCallback) -> dict[str, Any]:
        while True:
            job = self.coordinator.get_job(job_id)
            on_progress(job.progress, job.message or job.state)
            if job.job_state.is_terminal:
                return self._shown(job)
            time.sleep(POLL_SECS)


class RemoteJobs:
    """A skillq server, through `skillq.client.Client`."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def submit(self, request: dict[str, Any]) -> dict[str, Any]:
        options = {k: v for k, v in request.items() if k not in ("type", "params")}
        with self.server.client() as client:
            return client.submit(request["type"], request["params"], **options).raw

    def submit_many(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        with self.server.client() as client:
            return [job.raw for job in client.submit_many(requests)]

    def page(
        self, states: list[str] | None, types: list[str] | None, limit: int, offset: int
    ) -> dict[str, Any]:
        with self.server.client() as client:
            jobs, total = client.page(state=states, type=types, limit=limit, offset=offset)
        return {"jobs": [job.raw for job in jobs], "total": total, "limit": limit, "offset": offset}

    def show(self, job_id: str) -> dict[str, Any]:
        with self.server.client() as client:
            return client.get(job_id).raw

    def cancel(self, job_id: str) -> dict[str, Any]:
        with self.server.client() as client:
            return client.cancel(job_id).raw

    def retry(self, job_id: str) -> dict[str, Any]:
        with self.server.client() as client:
            return client.retry(job_id).raw

    def logs(self, job_id: str, since: int) -> dict[str, Any]:
        with self.server.client() as client:
            return client.logs(job_id, since=since)

    def watch(self, job_id: str, on_progress: ProgressCallback) -> dict[str, Any]:
        with self.server.client() as client:
            return client.wait(job_id, on_progress=on_progress).raw


def jobs_of(url: str | None, api_key: str | None, token: str | None) -> LocalJobs | RemoteJobs:
    server = server_of(url, api_key, token)
    return LocalJobs() if server is None else RemoteJobs(server)


def parse_params(text: str) -> dict[str, Any]:
    """`--params`: a JSON object, strictly parsed (no `NaN`), or exit 2 naming the problem."""
    from skillq.json_values import parse_json

    params = parse_json(text, "--params")
    if not isinstance(params, dict):
        raise InvalidRequest(f"--params must be a JSON object, not {type(params).__name__}")
    return params


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """`--delay`: seconds (`90`), or a number with a unit, or several (`10m`, `1h30m`, `2d`)."""
    spaced = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", spaced):
        return float(spaced)
    if not spaced or _DURATION_PART.sub("", spaced):
        raise InvalidRequest(f"--delay must be seconds or e.g. 10m, 1h30m, 2d (got {text!r})")
    return sum(float(n) * _UNIT_SECS[unit] for n, unit in _DURATION_PART.findall(spaced))


def follow(jobs: LocalJobs | RemoteJobs, job_id: str) -> dict[str, Any]:
    """The job once it ends; meanwhile a progress bar on a terminal (stderr)."""
    if not sys.stderr.isatty():
        return jobs.watch(job_id, lambda progress, message: None)
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(job_id, total=1.0)

        def show(progress: float | None, message: str | None) -> None:
            bar.update(task, completed=progress or 0.0, description=message or job_id)

        return jobs.watch(job_id, show)


def print_outcome(job: dict[str, Any]) -> None:
    """The ended job as JSON; exit 1 unless it completed (as `--wait` documents)."""
    print_json(job)
    if job["state"] != "completed":
        raise typer.Exit(JOB_NOT_COMPLETED)


@jobs_app.command("submit")
def jobs_submit(
    job_type: Annotated[
        str | None, typer.Argument(metavar="[TYPE]", help="Job type, e.g. sleep.")
    ] = None,
    params: Annotated[str, typer.Option(help="Parameters as a JSON object.")] = "{}",
    priority: Annotated[str | None, typer.Option(help="0-10, or low/normal/high.")] = None,
    ttl_hours: Annotated[
        int | None, typer.Option(help="Hours the job and its result are kept.")
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="A repeat with this key returns the first job.")
    ] = None,
    trace_id: Annotated[str | None, typer.Option(help="Your id to correlate the job.")] = None,
    depends_on: Annotated[
        list[str] | None,
        typer.Option(help="A job id this one waits for (repeat); it is cancelled if that fails."),
    ] = None,
    callback_url: Annotated[
        str | None, typer.Option(help="POST the job's outcome here (a signed webhook).")
    ] = None,
    delay: Annotated[
        str | None, typer.Option(help="Start no sooner than this from now: 90, 10m, 1h30m, 2d.")
    ] = None,
    at: Annotated[
        str | None, typer.Option(help="Start no sooner than this time: 2026-12-01T10:00:00Z.")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the job and show its progress.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON.")] = False,
    from_file: Annotated[
        str | None,
        typer.Option(help="Submit the jobs of a JSON Lines file (- for stdin) as one batch."),
    ] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    token: TokenOption = None,
) -> None:
    """Submit a job; prints its id (with --json the job, with --wait its final state).
    With --from-file, the file's jobs, all or none; prints their ids in order."""
    if from_file is not None:
        single = (priority, ttl_hours, idempotency_key, trace_id, depends_on, callback_url)
        if job_type is not None or wait or params != "{}" or any(single) or delay or at:
            raise InvalidRequest(
                "--from-file takes every job's fields from the file (and no --wait)"
            )
        _submit_file(jobs_of(url, api_key, token), from_file, as_json)
        return
    if job_type is None:
        raise InvalidRequest("give a job TYPE, or --from-file")
    request: dict[str, Any] = {"type": job_type, "params": parse_params(params)}
    if priority is not None:
        request["priority"] = int(priority) if priority.isdigit() else priority
    for name, value in (
        ("ttl_hours", ttl_hours),
        ("idempotency_key", idempotency_key),
        ("trace_id", trace_id),
        ("callback_url", callback_url),
        ("delay_secs", None if delay is None else parse_duration(delay)),
        ("run_at", at),
    ):
        if value is not None:
            request[name] = value
    if depends_on:
        request["depends_on"] = depends_on
    jobs = jobs_of(url, api_key, token)
    job = jobs.submit(request)
    if wait:
        print_outcome(follow(jobs, job["id"]))
    elif as_json:
        print_json(job)
    else:
        typer.echo(job["id"])


def _submit_file(jobs: LocalJobs | RemoteJobs, source: str, as_json: bool) -> None:
    from skillq.cli.job_files import read_submissions

    made = jobs.submit_many(read_submissions(source))
    if as_json:
        print_json({"jobs": made})
    else:
        for job in made:
            typer.echo(job["id"])


@jobs_app.command("list")
def jobs_list(
    state: Annotated[list[str] | None, typer.Option(help="Filter by state.")] = None,
    job_type: Annotated[list[str] | None, typer.Option("--type", help="Filter by type.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (1-100).")] = 20,
    offset: Annotated[int, typer.Option(help="Skip this many.")] = 0,
    as_json: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    token: TokenOption = None,
) -> None:
    """List jobs, newest first: a table on a terminal, else one line per job (full ids)."""
    page = jobs_of(url, api_key, token).page(state, job_type, limit, offset)
    if as_json:
        print_json(page)
        return
    rows = [
        (
            job["id"],
            job["type"],
            job["state"],
            "" if job["progress"] is None else f"{job['progress']:.0%}",
            job["attempts"],
            job["created_at"],
        )
        for job in page["jobs"]
    ]
    columns = ("id", "type", "state", "progress", "attempts", "created")
    print_rows(columns, rows, footer=f"{len(rows)} of {page['total']} jobs")


@jobs_app.command("show")
def jobs_show(
    job_id: JobIdArgument,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (always so).")] = True,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    token: TokenOption = None,
) -> None:
    """Show one job as JSON."""
    print_json(jobs_of(url, api_key, token).show(job_id))


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: JobIdArgument,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    token: TokenOption = None,
) -> None:
    """Cancel a job: a pending one at once, a running one by its worker (within a second)."""
    print_json(jobs_of(url, api_key, token).cancel(job_id))


@jobs_app.command("retry")
def jobs_retry(
    job_id: JobIdArgument,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    token: TokenOption = None,
) -> None:
    """Run a failed or cancelled job again (attempts reset, fresh TTL); prints it as JSON."""
    print_json(jobs_of(url, api_key, token).retry(job_id))


@jobs_app.command("watch")
def jobs_watch(
    job_id: JobIdArgument,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    token: TokenOption = None,
) -> None:
    """Follow a job with a progress bar until it ends, then print it as JSON.

    Exits 1 unless the job completed.
    """
    print_outcome(follow(jobs_of(url, api_key, token), job_id))


#: Seconds between reads while following a job's log.
LOG_POLL_SECS = 0.5


@jobs_app.command("logs")
def jobs_logs(
    job_id: JobIdArgument,
    follow_log: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until the job ends.")
    ] = False,
    since: Annotated[int, typer.Option(min=0, help="Only lines after this number.")] = 0,
    as_json: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    token: TokenOption = None,
) -> None:
    """Print a job's kept log: its log records, its tool's stderr, its error."""
    jobs = jobs_of(url, api_key, token)
    while True:
        page = jobs.logs(job_id, since)
        for line in page["lines"]:
            if as_json:
                typer.echo(json.dumps(line))
            else:
                typer.echo(f"{line['at']} {line['level']} {line['text']}")
        more = page["next_since"] != since and bool(page["lines"])
        since = page["next_since"]
        if more:
            continue  # a full page: read on at once
        if not follow_log or page["state"] in ("completed", "failed", "cancelled"):
            return
        time.sleep(LOG_POLL_SECS)
