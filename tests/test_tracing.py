"""Tracing: one trace per job from the HTTP request to the worker's attempts.

In process, the SDK's in-memory exporter shows the API side (request, submit, enqueue, the
traceparent the message carries, incoming and hostile `traceparent` headers, tracing off).
Across processes, a real API and a real worker export over OTLP/HTTP to a collector double
on loopback: the worker's attempt spans, a retry, the skill subprocess and an MCP tool call
all land in the job's trace; with the exporter `none` nothing is sent.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, format_span_id, format_trace_id
from starlette.testclient import TestClient

from skillq import tracing
from skillq.api.app import create_app
from skillq.settings import SettingsError, TelemetrySettings, load_settings
from tests.otlp_receiver import Receiver, otlp_receiver
from tests.support import LOCAL_URL, api_with_worker, wait_for, write_settings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, its spans kept in memory; off again afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.install(None)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(), base_url=LOCAL_URL) as client:
        yield client


@pytest.fixture
def sent(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> list:
    """The messages the app's coordinator enqueues (still enqueued for real)."""
    broker = client.app.state.coordinator.broker
    messages: list = []
    enqueue = broker.enqueue

    def recording(message, **kwargs):
        messages.append(message)
        return enqueue(message, **kwargs)

    monkeypatch.setattr(broker, "enqueue", recording)
    return messages


def by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    named = {span.name: span for span in finished}
    assert len(named) == len(finished), [span.name for span in finished]
    return named


def submit(client: TestClient, headers: dict | None = None, **body: object) -> dict:
    body = {"type": "sleep", "params": {"seconds": 0}, **body}
    response = client.post("/api/v1/jobs", json=body, headers=headers or {})
    assert response.status_code == 202, response.text
    return response.json()


def test_request_submit_and_enqueue_are_one_trace_the_job_and_message_carry(
    client: TestClient, spans: InMemorySpanExporter, sent: list
) -> None:
    job = submit(client)
    named = by_name(spans.get_finished_spans())
    request, submitted, enqueued = (
        named["POST /api/v1/jobs"],
        named["skillq.submit"],
        named["skillq.enqueue"],
    )
    trace_id = request.context.trace_id
    assert job["trace_id"] == format_trace_id(trace_id)
    assert request.parent is None and request.kind is SpanKind.SERVER
    assert submitted.parent.span_id == request.context.span_id
    assert enqueued.parent.span_id == submitted.context.span_id
    assert enqueued.kind is SpanKind.PRODUCER
    assert {s.context.trace_id for s in (request, submitted, enqueued)} == {trace_id}
    assert request.attributes["http.response.status_code"] == 202
    assert request.attributes["http.route"] == "/api/v1/jobs"
    assert submitted.attributes["skillq.job_id"] == job["id"]
    (message,) = sent
    version, trace_id_sent, parent_sent, _flags = message.options["traceparent"].split("-")
    assert (version, trace_id_sent) == ("00", job["trace_id"])
    assert parent_sent == format_span_id(enqueued.context.span_id)


def test_an_incoming_traceparent_is_continued_and_becomes_the_jobs_trace_id(
    client: TestClient, spans: InMemorySpanExporter
) -> None:
    job = submit(client, headers={"traceparent": TRACEPARENT})
    assert job["trace_id"] == TRACE_ID
    request = by_name(spans.get_finished_spans())["POST /api/v1/jobs"]
    assert format_span_id(request.parent.span_id) == PARENT_ID
    assert request.parent.is_remote


@pytest.mark.parametrize(
    "header",
    [
        "garbage",
        f"00-{'0' * 32}-{PARENT_ID}-01",  # all-zero trace id: invalid by the W3C rules
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
        f"ff-{TRACE_ID}-{PARENT_ID}-01",  # version ff is forbidden
        f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",  # upper case is not W3C
        f"00-{TRACE_ID}-{PARENT_ID}-01" + "x" * 4000,  # longer than any trace context
        "00-\u00e9\u00e9-\u00ff",
    ],
)
def test_a_malformed_traceparent_is_ignored_for_a_new_trace(
    client: TestClient, spans: InMemorySpanExporter, header: str
) -> None:
    job = submit(client, headers={"traceparent": header.encode("latin-1")})
    request = by_name(spans.get_finished_spans())["POST /api/v1/jobs"]
    assert request.parent is None
    assert job["trace_id"] == format_trace_id(request.context.trace_id) != TRACE_ID


def test_a_clients_w3c_trace_id_is_continued(
    client: TestClient, spans: InMemorySpanExporter, sent: list
) -> None:
    job = submit(client, trace_id=TRACE_ID.upper())
    assert job["trace_id"] == TRACE_ID
    named = by_name(spans.get_finished_spans())
    assert named["skillq.submit"].context.trace_id == int(TRACE_ID, 16)
    assert named["skillq.enqueue"].context.trace_id == int(TRACE_ID, 16)
    assert sent[0].options["traceparent"].split("-")[1] == TRACE_ID


def test_a_clients_other_trace_id_is_kept_as_given(
    client: TestClient, spans: InMemorySpanExporter
) -> None:
    job = submit(client, trace_id="order-42")
    assert job["trace_id"] == "order-42"
    named = by_name(spans.get_finished_spans())
    assert named["skillq.submit"].context.trace_id == named["POST /api/v1/jobs"].context.trace_id


def test_a_batch_is_one_trace_and_each_job_is_enqueued_in_its_own(
    client: TestClient, spans: InMemorySpanExporter, sent: list
) -> None:
    body = {"jobs": [{"type": "sleep"}, {"type": "sleep", "trace_id": TRACE_ID.upper()}]}
    response = client.post("/api/v1/jobs:batch", json=body)
    assert response.status_code == 202, response.text
    first, second = response.json()["jobs"]
    finished = spans.get_finished_spans()
    request = next(s for s in finished if s.name == "POST /api/v1/jobs:batch")
    batch = next(s for s in finished if s.name == "skillq.submit_batch")
    assert batch.parent.span_id == request.context.span_id
    assert batch.attributes["skillq.jobs"] == 2
    assert first["trace_id"] == format_trace_id(request.context.trace_id)
    assert second["trace_id"] == TRACE_ID
    enqueued = [s for s in finished if s.name == "skillq.enqueue"]
    assert sorted(format_trace_id(s.context.trace_id) for s in enqueued) == sorted(
        [first["trace_id"], TRACE_ID]
    )
    assert sorted(m.options["traceparent"].split("-")[1] for m in sent) == sorted(
        [first["trace_id"], TRACE_ID]
    )


def test_a_refused_submission_is_an_error_span(
    client: TestClient, spans: InMemorySpanExporter
) -> None:
    response = client.post("/api/v1/jobs", json={"type": "no-such-type"})
    assert response.status_code == 422
    named = by_name(spans.get_finished_spans())
    assert not named["skillq.submit"].status.is_ok
    assert named["POST /api/v1/jobs"].attributes["http.response.status_code"] == 422


def test_the_job_retry_enqueues_in_the_jobs_own_trace(
    client: TestClient, spans: InMemorySpanExporter, sent: list
) -> None:
    job = submit(client)
    client.delete(f"/api/v1/jobs/{job['id']}")
    spans.clear()
    response = client.post(f"/api/v1/jobs/{job['id']}/retry", headers={"traceparent": TRACEPARENT})
    assert response.status_code == 202, response.text
    enqueued = by_name(spans.get_finished_spans())["skillq.enqueue"]
    assert format_trace_id(enqueued.context.trace_id) == job["trace_id"] != TRACE_ID
    assert sent[-1].options["traceparent"].split("-")[1] == job["trace_id"]


def test_with_tracing_off_nothing_is_traced_and_trace_id_keeps_its_meaning(
    client: TestClient, sent: list
) -> None:
    assert not tracing.enabled()
    assert submit(client, headers={"traceparent": TRACEPARENT})["trace_id"] is None
    assert submit(client, trace_id="order-42")["trace_id"] == "order-42"
    assert submit(client, trace_id=TRACE_ID)["trace_id"] == TRACE_ID
    assert all("traceparent" not in message.options for message in sent)


def test_exporter_none_is_the_default_and_configures_nothing(tmp_path: Path) -> None:
    assert load_settings(write_settings(tmp_path, {})).telemetry.exporter == "none"
    assert tracing.configure_tracing(TelemetrySettings(), service_name="t") is None
    assert not tracing.enabled()


def test_otlp_without_its_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes the import fail, as it does where the extra is not installed.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(tracing.TelemetryUnavailable, match=r"skillq\[telemetry\]"):
        tracing.configure_tracing(TelemetrySettings(exporter="otlp"), service_name="t")
    assert not tracing.enabled()


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"exporter": "jaeger"}, "telemetry.exporter"),
        ({"otlp_endpoint": "127.0.0.1:4318"}, "telemetry.otlp_endpoint"),
        ({"otlp_endpoint": ""}, "telemetry.otlp_endpoint"),
    ],
)
def test_bad_telemetry_settings_are_refused(tmp_path: Path, section: dict, field: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(write_settings(tmp_path, {"telemetry": section}))
    assert field in str(raised.value)


# --- across processes: a real API and a real worker exporting over OTLP ---


def sections(directory: Path, receiver: Receiver, exporter: str) -> dict:
    return {
        "server": {"data_dir": str(directory / "data")},
        "workers": {"max_retries": 1, "retry_delay_secs": 0},
        "jobs": {"modules": ["tests.tracing_jobs"]},
        "skills": {"sandbox": "process"},
        "telemetry": {"exporter": exporter, "otlp_endpoint": receiver.url},
    }


def finished(http: httpx.Client, job_id: str) -> dict:
    def done() -> dict | None:
        job = http.get(f"/api/v1/jobs/{job_id}").json()
        return job if job["state"] in ("completed", "failed", "cancelled") else None

    return wait_for(done, timeout=60, what=f"job {job_id} to finish")


def mcp_call(http: httpx.Client, name: str, arguments: dict, traceparent: str) -> dict:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": name,
            "arguments": arguments,
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    headers = {
        "Accept": "application/json",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": name,
        "traceparent": traceparent,
    }
    response = http.post("/mcp", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["result"]


@pytest.fixture
def quick_export(monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK's own setting: the processes' batch processors export every 100 ms.
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")


def test_one_trace_spans_the_api_and_a_real_worker(tmp_path: Path, quick_export: None) -> None:
    with (
        otlp_receiver() as receiver,
        api_with_worker(tmp_path, sections(tmp_path, receiver, "otlp")) as base_url,
        httpx.Client(base_url=base_url, timeout=30) as http,
    ):
        flaky = http.post(
            "/api/v1/jobs",
            json={"type": "flaky_once"},
            headers={"traceparent": TRACEPARENT},
        ).json()
        skill = http.post(
            "/api/v1/jobs",
            json={
                "type": "execute_skill",
                "params": {"skill": "primes", "tool": "count_primes", "input": {"limit": 100}},
            },
        ).json()
        mcp_trace = uuid.uuid4().hex
        mcp_result = mcp_call(http, "sleep", {"seconds": 0}, f"00-{mcp_trace}-{PARENT_ID}-01")
        assert flaky["trace_id"] == TRACE_ID
        assert finished(http, flaky["id"])["state"] == "completed"
        assert finished(http, skill["id"])["state"] == "completed", skill
        assert not mcp_result.get("isError"), mcp_result

        def attempts(trace_id: str, count: int) -> list:
            found = [s for s in receiver.of_trace(trace_id) if s.name.startswith("skillq.attempt")]
            return found if len(found) >= count else None

        def with_spans(trace_id: str, *names: str) -> dict | None:
            """The trace's spans by name, once all of `names` have arrived: each process
            exports on its own schedule, and the API's request span ends only once its
            response is written, so it can come after the worker's attempts."""
            spans = {s.name: s for s in receiver.of_trace(trace_id)}
            return spans if all(name in spans for name in names) else None

        # Two attempts of the flaky job, siblings under the enqueue that sent its message.
        first, second = sorted(
            wait_for(lambda: attempts(TRACE_ID, 2), what="the flaky job's attempt spans"),
            key=lambda s: s.attributes["skillq.attempt"],
        )
        api_spans = ("POST /api/v1/jobs", "skillq.submit", "skillq.enqueue")
        trace = wait_for(lambda: with_spans(TRACE_ID, *api_spans), what="the flaky job's spans")
        request, submitted, enqueued = (trace[name] for name in api_spans)
        assert request.parent_span_id == PARENT_ID
        assert submitted.parent_span_id == request.span_id
        assert enqueued.parent_span_id == submitted.span_id
        assert first.parent_span_id == second.parent_span_id == enqueued.span_id
        assert (first.attributes["skillq.outcome"], second.attributes["skillq.outcome"]) == (
            "retrying",
            "completed",
        )
        assert {first.attributes["skillq.job_id"], second.attributes["skillq.job_id"]} == {
            flaky["id"]
        }
        assert {request.service, first.service} == {"skillq"}

        # The skill's subprocess is a child of the skill job's attempt.
        (attempt,) = wait_for(lambda: attempts(skill["trace_id"], 1), what="the skill attempt")
        runs = wait_for(
            lambda: [
                s for s in receiver.of_trace(skill["trace_id"]) if s.name == "skillq.skill.run_tool"
            ],
            what="the skill subprocess span",
        )
        assert [(r.parent_span_id, r.attributes["skillq.tool"]) for r in runs] == [
            (attempt.span_id, "count_primes")
        ]

        # An MCP tools/call continues its request's traceparent, down to the worker.
        wait_for(lambda: attempts(mcp_trace, 1), what="the MCP job's attempt")
        spans = wait_for(
            lambda: with_spans(mcp_trace, "skillq.submit", "mcp tools/call sleep"),
            what="the MCP request's spans",
        )
        assert spans["skillq.submit"].parent_span_id == spans["mcp tools/call sleep"].span_id


def test_with_exporter_none_nothing_is_exported(tmp_path: Path, quick_export: None) -> None:
    with otlp_receiver() as receiver:
        with (
            api_with_worker(tmp_path, sections(tmp_path, receiver, "none")) as base_url,
            httpx.Client(base_url=base_url, timeout=30) as http,
        ):
            job = http.post(
                "/api/v1/jobs", json={"type": "flaky_once"}, headers={"traceparent": TRACEPARENT}
            ).json()
            assert finished(http, job["id"])["state"] == "completed"
            assert job["trace_id"] is None
        # Both processes have stopped (a tracing one flushes then): nothing was sent.
        assert receiver.spans == []
