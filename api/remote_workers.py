"""The remote worker routes: register, heartbeat, fetch, and progress/logs/complete/fail
reports.

Only a worker token (`Authorization: Bearer skqw_...`, minted by `skillq auth worker-token
create`) may call them: user credentials (a JWT, an API key) get 403, none at all 401, in
every auth mode. A token sees only the
workers registered with it (another token's worker id is 404), and a worker reports only on
the attempt whose lease it holds (`skillq.jobs.remote_reports`: else 409). The store and
broker work runs in the thread pool; a fetch long-polls on threads of its own
(`FETCH_THREADS`, so waiting workers never starve other requests) in slices of at most
`_FETCH_SLICE_SECS`, so a worker that hangs up stops holding a thread soon after.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import anyio.to_thread
from dramatiq.errors import BrokerConnectionError
from jsonschema import Draft202012Validator
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from skillq.api import remote_worker_schemas as schemas
from skillq.api.request_json import read_json
from skillq.errors import Forbidden, InvalidParams, NotFound, ServiceUnavailable, Unauthorized
from skillq.jobs import remote_reports
from skillq.jobs.remote_fetch import MAX_WAIT_SECS, RemoteFetch
from skillq.jobs.schema_messages import schema_errors
from skillq.storage import worker_tokens, workers
from skillq.storage.database import STORE_OUTAGES, in_connection
from skillq.storage.worker_tokens import RemoteWorker, WorkerToken

_MAX_CACHED_TOKENS = 10_000
#: Long-polls waiting at once per API process; more wait for a thread (asynchronously).
FETCH_THREADS = 32
#: A fetch's default long-poll, in seconds.
DEFAULT_WAIT_SECS = 20.0
_FETCH_SLICE_SECS = 2.0


_VALIDATORS = {
    id(schema): Draft202012Validator(schema)
    for schema in (
        schemas.REGISTER,
        schemas.HEARTBEAT,
        schemas.FETCH,
        schemas.PROGRESS,
        schemas.LOGS,
        schemas.COMPLETE,
        schemas.FAIL,
    )
}


async def _body(request: Request, schema: dict[str, Any]) -> dict[str, Any]:
    raw = await request.body()
    body = await read_json(request) if raw.strip() else {}
    details = schema_errors(_VALIDATORS[id(schema)], body, "body")
    if details:
        raise InvalidParams("the request body breaks its schema", details)
    return body


async def _token(request: Request) -> WorkerToken:
    scheme, _, credential = request.headers.get("authorization", "").strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() == "bearer" and credential.startswith(worker_tokens.TOKEN_PREFIX):
        return await _checked_token(request, credential)
    key_header = request.app.state.settings.auth.api_key_header
    if scheme or key_header in request.headers:
        # A user's credentials (checked or not, as in auth mode none): the wrong kind.
        raise Forbidden("only a worker token may call the worker routes, not a user's credentials")
    raise Unauthorized("a worker token is required: 'Authorization: Bearer skqw_...'")


async def _checked_token(request: Request, credential: str) -> WorkerToken:
    """Like API keys, a token checked within `auth.api_key_cache_secs` is not looked up
    again (a revocation takes that long to apply): a busy worker reports several times a
    second."""
    cache: dict[str, tuple[float, WorkerToken]] = request.app.state.worker_tokens
    digest = worker_tokens.digest_of(credential)
    now = time.monotonic()
    cached = cache.get(digest)
    if cached is not None and now - cached[0] < request.app.state.settings.auth.api_key_cache_secs:
        return cached[1]
    row = await run_in_threadpool(_find_token, credential)
    if row is None:
        cache.pop(digest, None)
        raise Unauthorized("the worker token is unknown or revoked")
    if len(cache) >= _MAX_CACHED_TOKENS:
        cache.clear()
    cache[digest] = (now, row)
    return row


@in_connection
def _find_token(token: str) -> WorkerToken | None:
    return worker_tokens.find_active(token)


async def _worker(request: Request, token: WorkerToken, worker_id: str) -> RemoteWorker:
    return await run_in_threadpool(in_connection(_find_worker), worker_id, token.name)


def _find_worker(worker_id: str, token: str) -> RemoteWorker:
    """The worker, if it registered with `token` (call it with a connection open)."""
    worker = worker_tokens.get_worker(worker_id, token)
    if worker is None:
        raise NotFound(f"no remote worker {worker_id} registered with this token")
    return worker


def _subset(asked: list[str] | None, allowed: list[str], what: str) -> list[str]:
    if asked is None:
        return list(allowed)
    extra = sorted(set(asked) - set(allowed))
    if extra:
        raise Forbidden(f"the worker token does not allow the {what} {', '.join(extra)}")
    return asked


async def register(request: Request) -> JSONResponse:
    token = await _token(request)
    body = await _body(request, schemas.REGISTER)
    queues = _subset(body.get("queues"), token.queues, "queues")
    capabilities = _subset(body.get("capabilities"), token.capabilities, "capabilities")
    settings = request.app.state.settings

    @in_connection
    def record() -> RemoteWorker:
        worker = worker_tokens.register_worker(
            token.name, queues=queues, capabilities=capabilities, skills=body.get("skills")
        )
        workers.register(
            worker.id,
            host=body.get("host") or (request.client.host if request.client else "remote"),
            pid=body.get("pid", 0),
            queues=queues,
            threads=body.get("threads", 1),
        )
        return worker

    worker = await run_in_threadpool(record)
    answer = {
        "worker_id": worker.id,
        "queues": worker.queues,
        "capabilities": worker.capabilities,
        "skills": worker.skills,
        "heartbeat_secs": settings.workers.heartbeat_secs,
        "lease_secs": settings.workers.dead_after_secs,
        "max_wait_secs": MAX_WAIT_SECS,
        "max_log_bytes": settings.jobs.max_log_bytes,
        "max_body_size": settings.server.max_body_size,
    }
    return JSONResponse(answer, status_code=201)


async def heartbeat(request: Request) -> JSONResponse:
    token = await _token(request)
    body = await _body(request, schemas.HEARTBEAT)
    fetcher: RemoteFetch = request.app.state.remote_fetch

    @in_connection
    def beat() -> dict[str, list[str]]:
        worker = _find_worker(request.path_params["worker_id"], token.name)
        broker = request.app.state.coordinator.broker
        answer = remote_reports.heartbeat(worker, body["running"], broker)
        fetcher.recover_now_and_then()
        return answer

    return JSONResponse(await run_in_threadpool(beat))


async def fetch(request: Request) -> Response:
    token = await _token(request)
    worker = await _worker(request, token, request.path_params["worker_id"])
    body = await _body(request, schemas.FETCH)
    fetcher: RemoteFetch = request.app.state.remote_fetch
    deadline = time.monotonic() + body.get("wait_secs", DEFAULT_WAIT_SECS)
    await run_in_threadpool(fetcher.recover_now_and_then)
    while True:
        left = deadline - time.monotonic()
        # Long-polls wait on threads of their own, so they never starve other requests.
        try:
            assignment = await anyio.to_thread.run_sync(
                fetcher.fetch,
                worker,
                max(0.0, min(left, _FETCH_SLICE_SECS)),
                limiter=request.app.state.fetch_limiter,
            )
        except (*STORE_OUTAGES, BrokerConnectionError) as error:
            # The message stays unacknowledged: the broker hands it out again.
            raise ServiceUnavailable("the store or the broker is unavailable; try again") from error
        if assignment is not None:
            return JSONResponse({"job": assignment.to_dict()})
        if left <= _FETCH_SLICE_SECS or await request.is_disconnected():
            return Response(status_code=204)


async def _report_target(request: Request, schema: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The calling token's name and the report; the worker is looked up with the report's
    own store work, in one trip to the thread pool."""
    token = await _token(request)
    body = await _body(request, schema)
    return token.name, body


async def report_progress(request: Request) -> JSONResponse:
    token, body = await _report_target(request, schemas.PROGRESS)
    job_id = request.path_params["job_id"]

    @in_connection
    def record() -> bool:
        worker = _find_worker(body["worker_id"], token)
        return remote_reports.progress(
            worker, job_id, body["attempt"], body.get("progress"), body.get("message")
        )

    return JSONResponse({"cancel_requested": await run_in_threadpool(record)})


async def report_logs(request: Request) -> Response:
    token, body = await _report_target(request, schemas.LOGS)
    job_id = request.path_params["job_id"]
    entries = remote_reports.log_entries(body["lines"])
    max_bytes = request.app.state.settings.jobs.max_log_bytes

    @in_connection
    def record() -> None:
        worker = _find_worker(body["worker_id"], token)
        remote_reports.append_logs(worker, job_id, body["attempt"], entries, max_bytes)

    await run_in_threadpool(record)
    return Response(status_code=204)


async def report_complete(request: Request) -> JSONResponse:
    token, body = await _report_target(request, schemas.COMPLETE)
    job_id = request.path_params["job_id"]
    limit = request.app.state.settings.jobs.max_result_bytes
    broker = request.app.state.coordinator.broker

    @in_connection
    def record() -> str:
        worker = _find_worker(body["worker_id"], token)
        result, run_seconds = body.get("result"), body.get("run_seconds")
        return remote_reports.complete(
            worker, job_id, body["attempt"], result, run_seconds, limit, broker
        )

    return JSONResponse({"state": await run_in_threadpool(record)})


async def report_fail(request: Request) -> JSONResponse:
    token, body = await _report_target(request, schemas.FAIL)
    job_id = request.path_params["job_id"]
    coordinator = request.app.state.coordinator
    error = (body["error"]["type"], body["error"]["message"])

    @in_connection
    def record() -> str:
        worker = _find_worker(body["worker_id"], token)
        return remote_reports.fail(
            coordinator,
            worker,
            job_id,
            body["attempt"],
            error,
            retryable=body.get("retryable", True),
            run_seconds=body.get("run_seconds"),
        )

    return JSONResponse({"state": await run_in_threadpool(record)})


routes = [
    Route("/api/v1/workers/register", register, methods=["POST"]),
    Route("/api/v1/workers/{worker_id}/heartbeat", heartbeat, methods=["POST"]),
    Route("/api/v1/workers/{worker_id}/fetch", fetch, methods=["POST"]),
    Route("/api/v1/jobs/{job_id}/progress", report_progress, methods=["POST"]),
    Route("/api/v1/jobs/{job_id}/complete", report_complete, methods=["POST"]),
    Route("/api/v1/jobs/{job_id}/fail", report_fail, methods=["POST"]),
]
