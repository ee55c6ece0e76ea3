"""skillq as an MCP server, driven by the SDK's real client over every transport: Streamable
HTTP (2026-07-28 and the 2025-11-25 handshake), legacy SSE, and stdio (`skillq mcp`),
against a real API process and a real worker on the embedded SQLite broker and store.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import httpx
import pytest

from skillq.jobs.types import job_types_of
from tests.mcp_clients import PROTOCOL, TRANSPORTS, Rest, connect
from tests.mcp_raw import open_raw
from tests.support import ChildProcess, start_api, start_worker, wait_for, write_settings


@dataclass
class System:
    base_url: str
    settings_path: Path
    rest: Rest

    def connect(self, transport: str, **options):
        return connect(
            transport, base_url=self.base_url, settings_path=self.settings_path, **options
        )


def _system(directory: Path, *, worker: bool):
    settings_path = write_settings(
        directory,
        {
            "server": {"data_dir": str(directory / "data")},
            "workers": {"max_retries": 0, "retry_delay_secs": 0},
            # Long enough that a short job always finishes inline; tests that want the job
            # handle ask for a shorter wait per call.
            "mcp": {"inline_wait_secs": 60},
        },
    )
    api, base_url = start_api(settings_path, directory)
    processes: list[ChildProcess] = [api]
    if worker:
        processes.append(start_worker(settings_path, directory))
    return System(base_url, settings_path, Rest(base_url)), processes


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory):
    """An API with a worker: jobs run."""
    system, processes = _system(tmp_path_factory.mktemp("mcp-busy"), worker=True)
    yield system
    for process in reversed(processes):
        process.stop()


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory):
    """An API without a worker: jobs stay pending, so cancelling them is deterministic."""
    system, processes = _system(tmp_path_factory.mktemp("mcp-idle"), worker=False)
    yield system
    for process in processes:
        process.stop()


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return request.param


def _catalogue() -> dict:
    from skillq import actors

    return job_types_of(actors.broker)


def test_initialize_lists_every_job_type_as_a_tool_with_its_schema(
    busy: System, transport: str
) -> None:
    async def main():
        async with busy.connect(transport) as client:
            if transport in PROTOCOL:
                assert client.protocol_version == PROTOCOL[transport]
            assert client.server_info.name == "skillq"
            return {tool.name: tool for tool in (await client.list_tools()).tools}

    tools = anyio.run(main)
    for name in ("job_status", "list_jobs", "cancel_job", "retry_job", "list_job_types"):
        assert name in tools
    catalogue = _catalogue()
    assert "sleep" in catalogue
    for name, job_type in catalogue.items():
        assert tools[name].input_schema == job_type.params_schema
        assert tools[name].description == job_type.description


def test_fast_tools_answer_inline(busy: System, transport: str) -> None:
    async def main():
        async with busy.connect(transport) as client:
            types = await client.call_tool("list_job_types", {})
            missing = await client.call_tool("job_status", {"job_id": str(uuid.uuid4())})
            listed = await client.call_tool("list_jobs", {"limit": 1})
            return types, missing, listed

    types, missing, listed = anyio.run(main)
    assert not types.is_error
    names = [job_type["name"] for job_type in types.structured_content["job_types"]]
    assert names == list(_catalogue())
    assert missing.is_error
    assert missing.structured_content["error"]["code"] == "not_found"
    assert "no job with id" in missing.content[0].text
    assert not listed.is_error
    assert set(listed.structured_content) == {"jobs", "total", "limit", "offset"}


def test_job_tool_reports_progress_and_returns_the_result_inline(
    busy: System, transport: str
) -> None:
    events: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        events.append((progress, total, message))

    async def main():
        async with busy.connect(transport) as client:
            arguments = {"seconds": 2, "steps": 4, "echo": {"transport": transport}}
            return await client.call_tool("sleep", arguments, progress_callback=on_progress)

    result = anyio.run(main)
    assert not result.is_error, result.content
    assert result.structured_content["echo"] == {"transport": transport}
    assert result.structured_content["steps"] == 4
    assert events, "no progress notification arrived"
    values = [progress for progress, _, _ in events]
    assert values == sorted(set(values)), values  # strictly increasing
    assert values[-1] == 100, values  # the last one, before the result, is 100 %
    assert all(total == 100 and 0 < progress <= 100 for progress, total, _ in events)
    assert all(message.startswith("slept ") for _, _, message in events)
    job = busy.rest.job(result.meta["skillq/job"]["id"])
    assert job["state"] == "completed"
    assert job["result"] == result.structured_content


def test_past_the_inline_wait_the_call_returns_the_job_to_follow(
    busy: System, transport: str
) -> None:
    marker = uuid.uuid4().hex

    async def main():
        async with busy.connect(transport) as client:
            handle = await client.call_tool(
                "sleep",
                {"seconds": 0.5, "steps": 2, "echo": marker},
                meta={"skillq/inline_wait_secs": 0},
            )
            assert not handle.is_error, handle.content
            job_id = handle.structured_content["job_id"]
            with anyio.fail_after(60):
                while True:
                    status = await client.call_tool("job_status", {"job_id": job_id})
                    if status.structured_content["state"] in ("completed", "failed"):
                        return handle, status
                    await anyio.sleep(0.05)

    handle, status = anyio.run(main)
    follow = handle.structured_content["follow"]
    job_id = handle.structured_content["job_id"]
    assert handle.structured_content["state"] in ("pending", "running")
    assert follow["tools"]["status"] == {"name": "job_status", "arguments": {"job_id": job_id}}
    assert follow["stream_url"] == f"/api/v1/jobs/{job_id}/stream"
    assert job_id in handle.content[0].text
    # The job outlived the call and finished on its own.
    assert status.structured_content["state"] == "completed"
    assert status.structured_content["result"]["echo"] == marker


def test_bad_arguments_and_unknown_tools_are_tool_errors(busy: System, transport: str) -> None:
    async def main():
        async with busy.connect(transport) as client:
            wrong_type = await client.call_tool("sleep", {"seconds": "long"})
            extra = await client.call_tool("sleep", {"seconds": 0, "colour": "red"})
            unknown = await client.call_tool("no_such_tool", {})
            no_id = await client.call_tool("job_status", {})
            still_works = await client.call_tool("list_jobs", {"limit": 1})
            return wrong_type, extra, unknown, no_id, still_works

    wrong_type, extra, unknown, no_id, still_works = anyio.run(main)
    assert wrong_type.is_error
    error = wrong_type.structured_content["error"]
    assert error["code"] == "invalid_params"
    message = '"long" is not of type "number"'
    assert error["details"] == [{"path": "params.seconds", "message": message}]
    assert "params.seconds" in wrong_type.content[0].text
    assert extra.is_error and "colour" in extra.content[0].text
    assert unknown.is_error
    assert unknown.structured_content["error"]["code"] == "not_found"
    assert "no_such_tool" in unknown.content[0].text
    assert no_id.is_error and "job_id" in no_id.content[0].text
    assert not still_works.is_error


def test_a_failed_job_is_a_tool_error_naming_the_failure(busy: System, transport: str) -> None:
    async def main():
        async with busy.connect(transport) as client:
            return await client.call_tool("sleep", {"seconds": 0, "steps": 1, "fail": True})

    result = anyio.run(main)
    assert result.is_error
    assert "failed" in result.content[0].text
    assert "told to fail" in result.content[0].text
    assert result.structured_content["error"]["code"] == "job_failed"
    job_id = result.meta["skillq/job"]["id"]
    assert busy.rest.job(job_id)["state"] == "failed"


def test_cancel_job_tool_cancels_the_job_in_the_store(idle: System, transport: str) -> None:
    async def main():
        async with idle.connect(transport) as client:
            handle = await client.call_tool(
                "sleep", {"seconds": 1}, meta={"skillq/inline_wait_secs": 0}
            )
            job_id = handle.structured_content["job_id"]
            cancelled = await client.call_tool("cancel_job", {"job_id": job_id})
            again = await client.call_tool("cancel_job", {"job_id": job_id})
            retried = await client.call_tool("retry_job", {"job_id": job_id})
            return job_id, cancelled, again, retried

    job_id, cancelled, again, retried = anyio.run(main)
    assert not cancelled.is_error, cancelled.content
    assert cancelled.structured_content["state"] == "cancelled"
    assert again.is_error
    assert again.structured_content["error"]["code"] == "conflict"
    assert not retried.is_error
    assert retried.structured_content["state"] == "pending"
    assert idle.rest.job(job_id)["state"] == "pending"


def test_cancelling_the_call_while_it_waits_inline_cancels_the_job(
    idle: System, transport: str
) -> None:
    marker = uuid.uuid4().hex

    def submitted() -> str:
        return wait_for(
            lambda: idle.rest.unfinished_with_echo(marker), what="the tool call to submit its job"
        )

    async def main() -> str:
        async with idle.connect(transport) as client, anyio.create_task_group() as group:
            group.start_soon(client.call_tool, "sleep", {"seconds": 1, "echo": marker})
            job_id = await anyio.to_thread.run_sync(submitted)
            group.cancel_scope.cancel()
        return job_id

    job_id = anyio.run(main)
    assert idle.rest.wait_state(job_id, "cancelled")["state"] == "cancelled"


def test_skill_tools_run_as_execute_skill_jobs(busy: System) -> None:
    from skillq.engine.skills import SkillLibrary
    from skillq.settings import load_settings

    skills, _ = SkillLibrary(load_settings(busy.settings_path).skills.paths).all()
    expected = {
        f"{skill.name}.{tool.name}": tool for skill in skills for tool in skill.tools.values()
    }
    assert "text-stats.word_count" in expected

    async def main():
        async with busy.connect("http") as client:
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            counted = await client.call_tool("text-stats.word_count", {"text": "one two three"})
            refused = await client.call_tool("text-stats.word_count", {"words": 3})
            return tools, counted, refused

    tools, counted, refused = anyio.run(main)
    for name, tool in expected.items():
        assert tools[name].input_schema == tool.input_schema
    assert not counted.is_error, counted.content
    assert counted.structured_content["output"]["words"] == 3
    job = busy.rest.job(counted.meta["skillq/job"]["id"])
    assert job["type"] == "execute_skill"
    assert job["params"] == {
        "skill": "text-stats",
        "tool": "word_count",
        "input": {"text": "one two three"},
    }
    assert refused.is_error
    assert refused.structured_content["error"]["code"] == "invalid_params"
    assert "text" in refused.content[0].text


def test_index_documents_then_search_inline(busy: System) -> None:
    collection = f"mcp-{uuid.uuid4().hex[:8]}"
    documents = [
        {"id": "kiwi", "text": "The kiwi is a flightless bird of New Zealand."},
        {"id": "rust", "text": "Rust is a systems programming language."},
    ]

    async def main():
        async with busy.connect("http") as client:
            indexed = await client.call_tool(
                "index_documents", {"collection": collection, "documents": documents}
            )
            found = await client.call_tool(
                "search", {"collection": collection, "query": "flightless bird", "k": 1}
            )
            unknown = await client.call_tool("search", {"collection": "nope", "query": "x"})
            return indexed, found, unknown

    indexed, found, unknown = anyio.run(main)
    assert not indexed.is_error, indexed.content
    assert not found.is_error, found.content
    assert [hit["id"] for hit in found.structured_content["hits"]] == ["kiwi"]
    assert unknown.is_error
    assert unknown.structured_content["error"]["code"] == "not_found"


@pytest.mark.parametrize("transport_name", ["http-2026", "http-2025", "sse"])
def test_stopping_the_server_ends_inline_waits_with_the_job(
    tmp_path: Path, transport_name: str
) -> None:
    """A call waiting inline when the server stops answers with its job (which keeps its
    state, pending here) instead of seeing its stream cut. Raw JSON-RPC: the SDK clients
    tear themselves down when the server goes, whatever arrived."""
    settings_path = write_settings(
        tmp_path,
        {
            "server": {"data_dir": str(tmp_path / "data")},
            "workers": {"shutdown_grace_secs": 10},
            "mcp": {"inline_wait_secs": 60},
        },
    )
    api, base_url = start_api(settings_path, tmp_path)
    rest = Rest(base_url)
    marker = uuid.uuid4().hex
    client = open_raw(transport_name, base_url, settings_path)
    answers: list[dict | None] = []
    arguments = {"seconds": 1, "echo": marker}
    call = threading.Thread(
        target=lambda: answers.append(
            client.send(
                {
                    "jsonrpc": "2.0",
                    "id": 31,
                    "method": "tools/call",
                    "params": {"name": "sleep", "arguments": arguments},
                }
            )
        )
    )
    call.start()
    job_id = wait_for(lambda: rest.unfinished_with_echo(marker), what="the call's job")
    api.stop()
    call.join(timeout=60)
    assert answers and answers[0] is not None, api.log()
    result = answers[0]["result"]
    assert not result.get("isError"), result
    assert result["structuredContent"]["job_id"] == job_id
    assert result["structuredContent"]["state"] == "pending"
    with contextlib.suppress(httpx.HTTPError):
        client.close()  # the server is gone
    api, base_url = start_api(settings_path, tmp_path)
    try:
        assert Rest(base_url).job(job_id)["state"] == "pending", api.log()
    finally:
        api.stop()
