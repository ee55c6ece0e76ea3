"""The remote worker's side of the worker routes: register, beat, fetch, report.

Built on `httpx` and the client's `wire` (error envelopes become skillq errors). A call the
server could not take (a dropped connection, 502/503/504) is tried again with back-off for
up to `retry_secs`; each call is safe to repeat: a report the server already recorded
answers 409, which the worker reads as "done, or no longer yours".
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from skillq.client import wire


class WorkerClient:
    """One remote worker's connection to the API, with its worker token."""

    def __init__(self, url: str, token: str, *, retry_secs: float = 30.0) -> None:
        self.retry_secs = retry_secs
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(10.0),
        )
        self.worker_id = ""

    def close(self) -> None:
        self.http.close()

    def register(self, **fields: Any) -> dict[str, Any]:
        answer = self._post("/api/v1/workers/register", fields)
        self.worker_id = answer["worker_id"]
        return answer

    def heartbeat(self, running: list[str]) -> dict[str, list[str]]:
        return self._post(f"/api/v1/workers/{self.worker_id}/heartbeat", {"running": running})

    def fetch(self, wait_secs: float) -> dict[str, Any] | None:
        """One job to run, or None after `wait_secs` without one."""
        answer = self._post(
            f"/api/v1/workers/{self.worker_id}/fetch",
            {"wait_secs": wait_secs},
            timeout=wait_secs + 10.0,
        )
        return None if answer is None else answer["job"]

    def progress(
        self, job_id: str, attempt: int, progress: float | None, message: str | None
    ) -> bool:
        body = {"progress": progress, "message": message}
        return self._report(job_id, "progress", attempt, body)["cancel_requested"]

    def logs(self, job_id: str, attempt: int, lines: list[dict[str, str]]) -> None:
        """Append `lines` (`at`, `source`, `level`, `text`) to the job's log."""
        self._report(job_id, "logs", attempt, {"lines": lines})

    def complete(self, job_id: str, attempt: int, result: Any, run_seconds: float) -> str:
        body = {"result": result, "run_seconds": run_seconds}
        return self._report(job_id, "complete", attempt, body)["state"]

    def fail(
        self,
        job_id: str,
        attempt: int,
        error: tuple[str, str],
        *,
        retryable: bool,
        run_seconds: float,
    ) -> str:
        body = {
            "error": {"type": error[0], "message": error[1]},
            "retryable": retryable,
            "run_seconds": run_seconds,
        }
        return self._report(job_id, "fail", attempt, body)["state"]

    def _report(self, job_id: str, what: str, attempt: int, body: dict[str, Any]) -> Any:
        body = {"worker_id": self.worker_id, "attempt": attempt, **body}
        return self._post(f"/api/v1/jobs/{job_id}/{what}", body)

    def _post(self, path: str, body: dict[str, Any], *, timeout: float | None = None) -> Any:
        deadline = time.monotonic() + self.retry_secs
        attempt = 0
        while True:
            response = None
            try:
                response = self.http.post(
                    path, json=body, timeout=timeout or httpx.USE_CLIENT_DEFAULT
                )
            except httpx.TransportError:
                if time.monotonic() >= deadline:
                    raise
            else:
                if response.status_code == 204:
                    return None
                if not wire.should_retry(response) or time.monotonic() >= deadline:
                    return wire.decode(response)
            time.sleep(wire.backoff_secs(attempt, response))
            attempt += 1
