"""skillq's Python client: `Client` (blocking) and `AsyncClient` (asyncio), over httpx.

    from skillq.client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as skillq:
        job = skillq.submit("sleep", {"seconds": 1})
        done = skillq.wait(job.id, timeout=30, on_progress=lambda p, m: print(p, m))
        print(done.state, done.result)

Errors are skillq's own exceptions (`skillq.errors.NotFound`, `InvalidParams`, ...), matched
to the answer's error code; each carries `http_status`. It imports neither the server nor
its dependencies' heavy parts: httpx, httpx-sse and skillq's error hierarchy.
"""

from skillq.client.aio import AsyncClient
from skillq.client.models import TERMINAL_STATES, Job, JobError, JobEvent, SearchHit
from skillq.client.sync import Client

__all__ = [
    "TERMINAL_STATES",
    "AsyncClient",
    "Client",
    "Job",
    "JobError",
    "JobEvent",
    "SearchHit",
]
