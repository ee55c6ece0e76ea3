"""A second client, fastmcp's, against the same endpoints: tools, progress, the job handle,
tool errors, over Streamable HTTP (both eras) and legacy SSE.
"""

from __future__ import annotations

import anyio
import pytest
from fastmcp import Client
from fastmcp.client.transports import SSETransport, StreamableHttpTransport
from fastmcp.exceptions import ToolError

from tests.support import api_with_worker


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("mcp-interop")
    sections = {"server": {"data_dir": str(directory / "data")}, "mcp": {"inline_wait_secs": 60}}
    with api_with_worker(directory, sections) as url:
        yield url


VARIANTS = {
    "http-auto": lambda url: Client(StreamableHttpTransport(f"{url}/mcp"), mode="auto"),
    "http-legacy": lambda url: Client(StreamableHttpTransport(f"{url}/mcp"), mode="legacy"),
    "sse": lambda url: Client(SSETransport(f"{url}/mcp/sse"), mode="legacy"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fastmcp_client_lists_calls_and_follows_jobs(base_url: str, variant: str) -> None:
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async def main():
        async with VARIANTS[variant](base_url) as client:
            tools = {tool.name: tool for tool in await client.list_tools()}
            done = await client.call_tool(
                "sleep", {"seconds": 1, "steps": 4, "echo": variant}, progress_handler=on_progress
            )
            handle = await client.call_tool(
                "sleep", {"seconds": 0}, meta={"skillq/inline_wait_secs": 0}
            )
            status = await client.call_tool(
                "job_status", {"job_id": handle.structured_content["job_id"]}
            )
            with pytest.raises(ToolError) as refused:
                await client.call_tool("sleep", {"seconds": -1})
            return tools, done, handle, status, refused.value

    tools, done, handle, status, refused = anyio.run(main)
    assert tools["sleep"].input_schema["properties"]["seconds"]["maximum"] == 3600
    assert {"job_status", "cancel_job", "list_jobs"} <= set(tools)
    assert done.structured_content["echo"] == variant
    assert progress and progress == sorted(progress)
    assert handle.structured_content["job_id"] == status.structured_content["id"]
    assert "params.seconds" in str(refused)
