"""What the sync and async clients share: the requests they build, how an answer becomes a
value or an exception, and when to try again. No I/O here, so both clients stay thin.

Error answers become the exception whose `code` matches the envelope's (`NotFound` for
`not_found`, ...): the table is derived from skillq's error hierarchy, so a new error class
is mirrored without a row here. A code this client does not know is a plain `SkillqError`
with that code. Each raised error carries `http_status`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from skillq import errors
from skillq.client.models import Job, JobEvent

#: Answers worth another try: the server says it (or its store/broker) is briefly away.
RETRY_STATUSES = frozenset({502, 503, 504})
#: Seconds before the first retry; doubled each time, with jitter, capped.
FIRST_BACKOFF_SECS = 0.2
MAX_BACKOFF_SECS = 5.0
#: Methods that may be repeated after a dropped connection without doing the work twice.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "DELETE"})


def _error_classes() -> dict[str, type[errors.SkillqError]]:
    table: dict[str, type[errors.SkillqError]] = {}
    pending: list[type[errors.SkillqError]] = [errors.SkillqError]
    while pending:
        cls = pending.pop()
        table.setdefault(getattr(cls, "code", ""), cls)
        pending.extend(cls.__subclasses__())
    return table


ERROR_CLASSES = _error_classes()


@dataclass(frozen=True, slots=True)
class Call:
    """One API request, before it is sent."""

    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None

    def request(self, client: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        params = {k: v for k, v in self.params.items() if v is not None}
        return client.build_request(self.method, self.path, params=params, json=self.json)


def submit_call(
    job_type: str,
    params: dict[str, Any] | None,
    *,
    priority: int | str | None,
    ttl_hours: int | None,
    idempotency_key: str | None,
    trace_id: str | None,
    options: dict[str, Any] | None,
) -> Call:
    body: dict[str, Any] = {"type": job_type, "params": params or {}}
    for name, value in (
        ("priority", priority),
        ("ttl_hours", ttl_hours),
        ("idempotency_key", idempotency_key),
        ("trace_id", trace_id),
    ):
        if value is not None:
            body[name] = value
    body.update(options or {})
    return Call("POST", "/api/v1/jobs", json=body)


def batch_call(submissions: list[dict[str, Any]]) -> Call:
    """`POST /api/v1/jobs:batch`: each item a submit body (`type`, `params`, `priority`,
    `idempotency_key`, `run_at` as an aware datetime or text, ...)."""
    jobs = []
    for submission in submissions:
        item = dict(submission)
        item.setdefault("params", {})
        if isinstance(item.get("run_at"), datetime):
            item.update(delay_options(item.pop("run_at"), None))
        jobs.append(item)
    return Call("POST", "/api/v1/jobs:batch", json={"jobs": jobs})


def delay_options(run_at: datetime | str | None, delay_secs: float | None) -> dict[str, Any]:
    """A submission's `run_at` / `delay_secs`; a naive datetime is refused before sending,
    as the server would refuse it (whose local time would it be?)."""
    options: dict[str, Any] = {}
    if isinstance(run_at, datetime):
        if run_at.tzinfo is None:
            raise ValueError("run_at needs a timezone (e.g. datetime.now(UTC))")
        run_at = run_at.isoformat()
    if run_at is not None:
        options["run_at"] = run_at
    if delay_secs is not None:
        options["delay_secs"] = delay_secs
    return options


def list_call(
    *, states: list[str] | None, types: list[str] | None, limit: int, offset: int
) -> Call:
    params = {
        "state": ",".join(states) if states else None,
        "type": ",".join(types) if types else None,
        "limit": limit,
        "offset": offset,
    }
    return Call("GET", "/api/v1/jobs", params=params)


def job_path(job_id: str, suffix: str = "") -> str:
    return f"/api/v1/jobs/{httpx.URL(path=job_id).raw_path.decode()}{suffix}"


def search_call(collection: str, query: str, k: int, owner: str | None) -> Call:
    name = httpx.URL(path=collection).raw_path.decode()
    params = {"q": query, "k": k, "owner": owner}
    return Call("GET", f"/api/v1/collections/{name}/search", params=params)


def auth_headers(api_key: str | None, token: str | None, key_header: str) -> dict[str, str]:
    if api_key is not None and token is not None:
        raise ValueError("pass an api_key or a token, not both")
    if api_key is not None:
        return {key_header: api_key}
    if token is not None:
        return {"Authorization": f"Bearer {token}"}
    return {}


def decode(response: httpx.Response) -> Any:
    """The answer's JSON, or the matching skillq error raised."""
    if response.is_success:
        return response.json()
    raise error_of(response)


def error_of(response: httpx.Response) -> errors.SkillqError:
    try:
        envelope = response.json()["error"]
        code, message = str(envelope["code"]), str(envelope["message"])
        details = envelope.get("details")
    except (ValueError, KeyError, TypeError):
        code = "http_error"
        message = f"HTTP {response.status_code} from {response.request.url}"
        details = None
    cls = ERROR_CLASSES.get(code, errors.SkillqError)
    error = cls(message, details)
    if cls is errors.SkillqError:
        error.code = code  # keep the server's word for it
    error.http_status = response.status_code  # type: ignore[attr-defined]
    retry_after = response.headers.get("retry-after", "")
    if isinstance(error, errors.QuotaExceeded) and retry_after.isdigit():
        error.retry_after = int(retry_after)
    return error


def should_retry(response: httpx.Response) -> bool:
    """A 503 whose details name jobs is a batch the broker took only in part: sending it
    again would queue its queued jobs twice, so the caller gets the error instead."""
    return response.status_code in RETRY_STATUSES and not _names_jobs(response)


def _names_jobs(response: httpx.Response) -> bool:
    try:
        details = response.json()["error"]["details"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(details, list) and any(
        isinstance(detail, dict) and "job_id" in detail for detail in details
    )


def backoff_secs(attempt: int, response: httpx.Response | None) -> float:
    """How long to wait before try `attempt + 1`: the server's Retry-After when it says so."""
    if response is not None:
        header = response.headers.get("retry-after", "")
        if header.isdigit():
            return min(float(header), MAX_BACKOFF_SECS)
    ceiling = min(FIRST_BACKOFF_SECS * 2**attempt, MAX_BACKOFF_SECS)
    return ceiling / 2 + random.uniform(0, ceiling / 2)


#: Longest quiet wait on an event stream before the deadline is checked again (seconds).
STREAM_SLICE_SECS = 5.0


def deadline_of(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def read_slice(deadline: float | None) -> float:
    """How long the next quiet read may block; `TimeoutError` once the deadline has passed."""
    if deadline is None:
        return STREAM_SLICE_SECS
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the job did not finish in time")
    return min(left, STREAM_SLICE_SECS)


def report(
    event: JobEvent, on_progress: Callable[[float | None, str | None], None] | None
) -> Job | None:
    """Passes an event's progress to the caller's callback; the job, for a `state` event."""
    job = event.job
    if on_progress is not None:
        if job is not None:
            on_progress(job.progress, job.message)
        elif event.kind == "progress":
            on_progress(event.data.get("progress"), event.data.get("message"))
    return job
