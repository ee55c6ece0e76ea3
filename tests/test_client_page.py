"""`Client.page` / `AsyncClient.page`: one page of jobs and the total, with the filters sent
as the REST API reads them (the CLI's `jobs list --url` uses it)."""

from __future__ import annotations

import anyio
import httpx

from skillq.client import AsyncClient, Client
from skillq.errors import InvalidParams

JOB = {"id": "0b8a4f0e-6f1e-4a7e-9d5e-0d7c1b1e2f3a", "type": "sleep", "state": "failed"}


def _answer(request: httpx.Request) -> httpx.Response:
    if request.url.params.get("limit") == "0":
        error = {"code": "invalid_params", "message": "invalid list filters", "details": []}
        return httpx.Response(422, json={"error": error})
    assert request.url.path == "/api/v1/jobs"
    assert dict(request.url.params) == {
        "state": "failed,cancelled",
        "type": "sleep",
        "limit": "2",
        "offset": "4",
    }
    return httpx.Response(200, json={"jobs": [JOB], "total": 5, "limit": 2, "offset": 4})


def test_the_sync_page_sends_the_filters_and_returns_the_total() -> None:
    with Client("http://skillq.test", transport=httpx.MockTransport(_answer)) as client:
        jobs, total = client.page(state=["failed", "cancelled"], type=["sleep"], limit=2, offset=4)
        assert total == 5 and [job.id for job in jobs] == [JOB["id"]]
        try:
            client.page(limit=0)
        except InvalidParams as error:
            assert error.http_status == 422  # type: ignore[attr-defined]
        else:
            raise AssertionError("a 422 must raise InvalidParams")


def test_the_async_page_matches() -> None:
    async def main() -> tuple[list, int]:
        transport = httpx.MockTransport(_answer)
        async with AsyncClient("http://skillq.test", transport=transport) as client:
            return await client.page(
                state=["failed", "cancelled"], type=["sleep"], limit=2, offset=4
            )

    jobs, total = anyio.run(main)
    assert total == 5 and jobs[0].state == "failed"
