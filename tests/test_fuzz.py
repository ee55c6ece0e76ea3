"""Property-based fuzzing of every way a value gets in, then of every way it is read back.

hypothesis throws generated JSON at REST submit, MCP `tools/call` and the CLI, on SQLite and
on PostgreSQL: non-finite numbers, lone surrogates (in values and keys), deep nesting, huge
integers and strings, NUL, in every field of every job type and every submission option.
Every answer must be inside its envelope (a job, or `{"error": {code, message, details}}`;
a JSON-RPC result) and strict JSON; never a 5xx. Afterwards every stored job is read back
through the listing, one by one, cancelled, streamed to its end, through MCP `list_jobs`
and `job_status`, and every collection is listed and searched: all of it must still work.

Bounded for CI; `SKILLQ_FUZZ_EXAMPLES=2000 pytest tests/test_fuzz.py` runs longer by hand.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from mcp_types import CLIENT_CAPABILITIES_META_KEY, PROTOCOL_VERSION_META_KEY
from starlette.testclient import TestClient
from typer.testing import CliRunner

from skillq import actors
from skillq.api.app import create_app
from skillq.api.mcp.immediate import IMMEDIATE_TOOLS
from skillq.cli.main import app as cli_app
from skillq.jobs.coordinator import JobCoordinator
from skillq.jobs.fields import job_to_dict
from skillq.settings import StorageSettings

EXAMPLES = int(os.environ.get("SKILLQ_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one store per test, shared by its examples
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
JOB_TYPES = sorted(
    name for name, actor in actors.broker.actors.items() if "params_schema" in actor.options
)
SKILL_TOOLS = ["text-stats.word_count", "primes.count_primes"]

# --- hostile JSON -------------------------------------------------------------------------

lone_surrogates = st.characters(categories=["Cs"])
hostile_text = st.one_of(
    st.text(max_size=20),
    st.text(st.one_of(st.characters(), lone_surrogates), max_size=10),
    st.sampled_from(["\x00", "a\x00b", "\ud800", "\udfff", "😀", "\u2028", "'", '"', "\\"]),
    st.builds(lambda n, c: c * n, st.integers(10_000, 200_000), st.sampled_from("x\x00é")),
)
hostile_numbers = st.one_of(
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [2**63, 2**64, -(2**63) - 1, 10**3999, 10**4000, -(10**4100), 1e308, -0.0, 5e-324]
    ),
)
#: Leaves no store can read back, each of them.
unstorable = st.sampled_from(
    [float("nan"), float("inf"), -float("inf"), 10**4001, -(10**4100), "\ud800", "a\udfffb"]
) | st.text(lone_surrogates, min_size=1, max_size=3)
scalars = st.one_of(st.none(), st.booleans(), hostile_numbers, hostile_text)
hostile_json = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(hostile_text, children, max_size=4)
    ),
    max_leaves=12,
)


def nested(leaf: Any, depth: int) -> Any:
    for level in range(depth):
        leaf = [leaf] if level % 2 else {"k": leaf}
    return leaf


hostile_values = st.one_of(
    hostile_json,
    st.builds(nested, hostile_json, st.integers(55, 75)),
)


def wire(value: Any) -> str:
    """JSON text as a hostile client writes it: NaN and Infinity bare, surrogates escaped."""
    return json.dumps(value, allow_nan=True)


def positions(value: Any, found: list) -> list:
    """Every (container, key) a value has, the places a poisoned leaf can go."""
    if isinstance(value, dict):
        for key, child in value.items():
            found.append((value, key))
            positions(child, found)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found.append((value, index))
            positions(child, found)
    return found


@st.composite
def poisoned(draw: st.DrawFn, schema: dict) -> dict:
    """Params valid for the schema but for one leaf: NaN, a lone surrogate, a huge integer.
    Schemas take such leaves (jsonschema: NaN is a number within any maximum), so this is
    what reaches the store when nothing else checks."""
    params = draw(from_schema(schema))
    leaf = draw(unstorable)
    places = positions(params, [])
    if places and draw(st.booleans()):
        container, key = draw(st.sampled_from(places))
        container[key] = leaf
    else:
        params[draw(st.sampled_from([*schema.get("properties", {}), "echo"]))] = leaf
    return params


def params_of(job_type: str) -> st.SearchStrategy[dict]:
    """Every field of the job type's params: valid but for one poisoned leaf, or each absent
    or hostile, plus unknown ones."""
    schema = actors.broker.get_actor(job_type).options["params_schema"]
    fields = {name: hostile_values for name in schema.get("properties", {})}
    if job_type == "index_documents":
        document = st.fixed_dictionaries(
            {"id": hostile_text, "text": hostile_text}, optional={"metadata": hostile_values}
        )
        fields["documents"] = st.one_of(st.lists(document, max_size=3), hostile_values)
    return (
        poisoned(schema)
        | poisoned(schema)
        | st.fixed_dictionaries({}, optional={**fields, "unknown": hostile_values})
        | st.dictionaries(hostile_text, hostile_values, max_size=3)
    )


@st.composite
def submissions(draw: st.DrawFn) -> dict:
    job_type = draw(st.sampled_from([*JOB_TYPES, "nope"]) | hostile_text)
    body = {"type": job_type}
    body["params"] = draw(params_of(job_type) if job_type in JOB_TYPES else hostile_values)
    options = {
        "priority": hostile_values | st.sampled_from(["low", "high", 11, 5.0]),
        "ttl_hours": hostile_values | st.integers(-1, 200),
        "idempotency_key": hostile_text | st.sampled_from(["k1", "k2"]),
        "trace_id": hostile_text,
        "delay_secs": hostile_values,
    }
    body.update(draw(st.fixed_dictionaries({}, optional=options)))
    return body


# --- the envelope ------------------------------------------------------------------------


def strict(response: Any) -> Any:
    """The answer parsed as strict JSON: a NaN or a lone surrogate in it fails here."""
    assert response.status_code < 500, response.text[:2000]
    text = response.content.decode("utf-8")  # raises on anything that is not UTF-8
    return json.loads(text, parse_constant=not_json)


def not_json(constant: str) -> None:
    raise AssertionError(f"the answer holds {constant}, which is not JSON")


def assert_rest_envelope(response: Any) -> dict:
    document = strict(response)
    if response.status_code < 300:
        assert {"id", "state", "params"} <= document.keys()
    else:
        error = document["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str)
        assert len(response.content) < 20_000, "an error echoed too much"
    return document


def mcp_call(client: TestClient, name: str, arguments_text: str) -> dict:
    meta = {PROTOCOL_VERSION_META_KEY: "2026-07-28", CLIENT_CAPABILITIES_META_KEY: {}}
    meta_text = json.dumps({**meta, "skillq/inline_wait_secs": 0})
    body = (
        f'{{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {{"name": '
        f'{json.dumps(name)}, "arguments": {arguments_text}, "_meta": {meta_text}}}}}'
    )
    response = client.post(
        "/mcp",
        content=body.encode(),
        headers={
            "Accept": "application/json",
            "Content-Type": "application/json",
            "MCP-Protocol-Version": "2026-07-28",
            "Mcp-Method": "tools/call",
            # The header carries the name only when it can (HTTP headers are Latin-1).
            "Mcp-Name": name if name.isascii() and name.isprintable() else "x",
        },
    )
    answer = strict(response)
    assert answer.get("jsonrpc") == "2.0"
    assert "result" in answer or "error" in answer, answer
    return answer


# --- the targets -------------------------------------------------------------------------


@pytest.fixture
def client(store: StorageSettings) -> Iterator[TestClient]:
    with TestClient(create_app(), base_url="http://127.0.0.1:8000") as client:
        # One job at the edges of what is accepted, so the reads below always have one.
        edge = {"nul": "a\x00b", "big": -(10**3999), "tiny": 5e-324, "deep": nested(0, 59)}
        submitted = client.post("/api/v1/jobs", json={"type": "sleep", "params": {"echo": edge}})
        assert submitted.status_code == 202, submitted.text
        yield client
        read_everything_back(client)


def read_everything_back(client: TestClient) -> None:
    """What a poisoned row used to break: every read of every job, after the fuzzing."""
    ids, offset = [], 0
    while True:
        page = strict(client.get("/api/v1/jobs", params={"limit": 100, "offset": offset}))
        ids += [job["id"] for job in page["jobs"]]
        offset += 100
        if offset >= page["total"]:
            break
    assert ids and len(ids) == page["total"]
    for job_id in ids:
        assert strict(client.get(f"/api/v1/jobs/{job_id}"))["id"] == job_id
        cancelled = client.post(f"/api/v1/jobs/{job_id}/cancel")
        assert cancelled.status_code in (200, 202, 409), cancelled.text
        strict(cancelled)
        with client.stream("GET", f"/api/v1/jobs/{job_id}/stream") as stream:
            events = [line for line in stream.iter_lines() if line.startswith("data: ")]
        last = json.loads(events[-1][len("data: ") :], parse_constant=not_json)
        assert last["state"] == "cancelled"
        status = mcp_call(client, "job_status", json.dumps({"job_id": job_id}))
        assert status["result"]["isError"] is False, status
    listed = mcp_call(client, "list_jobs", '{"limit": 100}')
    assert listed["result"]["structuredContent"]["total"] == len(ids)
    for collection in strict(client.get("/api/v1/collections"))["collections"]:
        found = client.get(f"/api/v1/collections/{collection['name']}/search", params={"q": "a"})
        assert found.status_code in (200, 404), found.text
        strict(found)


@FUZZ
@given(body=submissions())
def test_rest_submit_never_breaks(client: TestClient, body: dict) -> None:
    response = client.post(
        "/api/v1/jobs", content=wire(body), headers={"Content-Type": "application/json"}
    )
    assert_rest_envelope(response)


@FUZZ
@given(
    name=st.sampled_from([*JOB_TYPES, *IMMEDIATE_TOOLS, *SKILL_TOOLS]) | hostile_text,
    arguments=st.dictionaries(hostile_text, hostile_values, max_size=4) | hostile_values,
)
def test_mcp_tools_call_never_breaks(client: TestClient, name: str, arguments: Any) -> None:
    answer = mcp_call(client, name, wire(arguments))
    if "result" in answer and answer["result"].get("isError"):
        error = answer["result"]["structuredContent"]["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str)
        assert len(json.dumps(answer)) < 20_000, "an error echoed too much"


@settings(FUZZ, max_examples=max(5, EXAMPLES // 4))
@given(job_type=st.sampled_from(JOB_TYPES), data=st.data())
def test_cli_submit_never_breaks(
    store: StorageSettings, job_type: str, data: st.DataObject
) -> None:
    text = wire(data.draw(params_of(job_type)))
    if "\x00" in text:  # an argv cannot hold NUL: the shell would cut it there
        text = text.replace("\x00", "")
    result = CliRunner().invoke(cli_app, ["jobs", "submit", job_type, "--params", text])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code in (0, 2, 3), result.output
    # And what it wrote reads back as strict JSON.
    coordinator = JobCoordinator(actors.broker, actors.settings)
    for job in coordinator.list_jobs(limit=100).jobs:
        json.dumps(job_to_dict(job), allow_nan=False, ensure_ascii=False).encode("utf-8")
