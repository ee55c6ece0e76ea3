"""Hostile values at every way in, on SQLite and PostgreSQL (issue 11, findings 1, 5, 9).

A value no store can read back (NaN, Infinity, a lone surrogate, a 5,000-digit integer) is
refused before anything is written, with the failing path; afterwards every read (list,
get, cancel, stream, MCP) still answers. An idempotency key never hands out another
request's job. Errors quote values as JSON, cut short, and name no server path.
"""

from __future__ import annotations

import dataclasses
import json
import math
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp_types import CLIENT_CAPABILITIES_META_KEY, PROTOCOL_VERSION_META_KEY
from starlette.testclient import TestClient
from typer.testing import CliRunner

from skillq import actors
from skillq.api.app import create_app
from skillq.brokers.job_status import ATTEMPT_OPTION, JOB_ID_OPTION, JobStatus
from skillq.cli.main import app as cli_app
from skillq.errors import IdempotencyKeyReused, InvalidParams
from skillq.jobs.coordinator import JobCoordinator
from skillq.jobs.schedules import check_schedules
from skillq.json_values import parse_json, storable_problems
from skillq.settings import ScheduleSettings, SettingsError, StorageSettings
from skillq.storage import jobs
from skillq.storage.database import connection

#: Bodies Python's json module parses but that are not JSON: refused at parse time, 400.
NOT_JSON = {
    "NaN": b'{"type": "sleep", "params": {"seconds": 0, "echo": NaN}}',
    "Infinity": b'{"type": "sleep", "params": {"echo": [1, Infinity]}}',
    "-Infinity": b'{"type": "sleep", "params": {"seconds": -Infinity}}',
}
#: JSON no store reads back: refused with the failing path, 422.
UNSTORABLE = {
    "lone surrogate": (b'{"type": "sleep", "params": {"echo": "a\\ud800"}}', "params.echo"),
    "surrogate key": (b'{"type": "sleep", "params": {"echo": {"\\udfff": 1}}}', "params.echo"),
    "5,000 digits": (
        b'{"type": "sleep", "params": {"echo": [' + b"9" * 5000 + b"]}}",
        "params.echo.0",
    ),
    "4,001 digits": (
        b'{"type": "sleep", "params": {"echo": {"n": -' + b"1" * 4001 + b"}}}",
        "params.echo.n",
    ),
    "overflow to inf": (b'{"type": "sleep", "params": {"echo": [-1e400]}}', "params.echo.0"),
    "surrogate key option": (
        b'{"type": "sleep", "idempotency_key": "k\\udc00"}',
        "body.idempotency_key",
    ),
}


@pytest.fixture
def client(store: StorageSettings) -> Iterator[TestClient]:
    """The app in process on a fresh store of each backend; MCP wants a loopback Host."""
    with TestClient(create_app(), base_url="http://127.0.0.1:8000") as client:
        yield client


def jobs_count() -> int:
    with connection():
        return jobs.list_jobs(limit=1).total


def mcp_call(client: TestClient, name: str, raw_arguments: str, **meta: object) -> dict:
    """One 2026-07-28 tools/call, its arguments given as raw JSON text (NaN and all)."""
    meta_text = json.dumps(
        {PROTOCOL_VERSION_META_KEY: "2026-07-28", CLIENT_CAPABILITIES_META_KEY: {}, **meta}
    )
    body = (
        '{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": '
        f'{json.dumps(name)}, "arguments": {raw_arguments}, "_meta": {meta_text}}}}}'
    )
    response = client.post(
        "/mcp",
        content=body.encode("utf-8", "surrogatepass"),
        headers={
            "Accept": "application/json",
            "Content-Type": "application/json",
            "MCP-Protocol-Version": "2026-07-28",
            "Mcp-Method": "tools/call",
            "Mcp-Name": name,
        },
    )
    assert response.status_code == 200, response.text
    return response.json()["result"]


def assert_every_read_works(client: TestClient) -> None:
    """What a poisoned row broke: the listing (everyone's), each job, and MCP list_jobs."""
    listing = client.get("/api/v1/jobs", params={"limit": 100})
    assert listing.status_code == 200, listing.text
    for job in listing.json()["jobs"]:
        assert client.get(f"/api/v1/jobs/{job['id']}").status_code == 200
    listed = mcp_call(client, "list_jobs", '{"limit": 100}')
    assert listed["isError"] is False, listed
    assert listed["structuredContent"]["total"] == listing.json()["total"]


@pytest.mark.parametrize("name", NOT_JSON)
def test_nan_and_infinity_are_not_json_400_and_nothing_is_written(
    client: TestClient, name: str
) -> None:
    before = jobs_count()
    response = client.post("/api/v1/jobs", content=NOT_JSON[name])
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["details"] == [
        {"path": "body", "message": f"{name} is not JSON (RFC 8259 has no NaN or Infinity)"}
    ]
    assert jobs_count() == before
    assert_every_read_works(client)


@pytest.mark.parametrize("name", UNSTORABLE)
def test_unstorable_values_are_422_with_the_path_and_nothing_is_written(
    client: TestClient, name: str
) -> None:
    body, path = UNSTORABLE[name]
    client.post("/api/v1/jobs", json={"type": "sleep"})  # a good job for the reads below
    before = jobs_count()
    response = client.post("/api/v1/jobs", content=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_params"
    assert [detail["path"] for detail in error["details"]] == [path]
    assert jobs_count() == before
    assert_every_read_works(client)


def test_nul_and_the_integer_bounds_round_trip_on_both_stores(client: TestClient) -> None:
    """What is accepted reads back identically: NUL (stored escaped), 4,000-digit integers,
    the largest finite float, deep-but-allowed nesting, any Unicode."""
    echo = {
        "nul": "a\x00b",
        "ints": [-(2**63), 2**64, int("9" * 4000), -int("9" * 4000)],
        "float": 1.7976931348623157e308,
        "text": "żółw 🐢 \u2028",
        "deep": json.loads("[" * 60 + "]" * 60),
    }
    response = client.post("/api/v1/jobs", json={"type": "sleep", "params": {"echo": echo}})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert client.get(f"/api/v1/jobs/{job_id}").json()["params"]["echo"] == echo
    assert client.delete(f"/api/v1/jobs/{job_id}").status_code == 200
    assert_every_read_works(client)


def test_mcp_arguments_are_checked_before_any_job(client: TestClient) -> None:
    before = jobs_count()
    for raw, path in [
        ('{"seconds": 0, "echo": NaN}', "arguments.echo"),
        ('{"echo": {"a": ["\\ud800"]}}', "arguments.echo.a.0"),
        ('{"echo": 1e400}', "arguments.echo"),
    ]:
        result = mcp_call(client, "sleep", raw)
        assert result["isError"] is True, result
        error = result["structuredContent"]["error"]
        assert error["code"] == "invalid_params"
        assert [detail["path"] for detail in error["details"]] == [path]
    # The call's own options: a NaN wait is refused before any job exists.
    result = mcp_call(client, "sleep", '{"seconds": 0}', **{"skillq/inline_wait_secs": math.nan})
    assert result["structuredContent"]["error"]["details"][0]["path"].startswith("_meta.")
    # An immediate tool too: a lone surrogate in a filter never reaches the database.
    result = mcp_call(client, "list_jobs", '{"type": ["\\udead"]}')
    assert result["structuredContent"]["error"]["details"][0]["path"] == "arguments.type.0"
    # And a task-augmented call, which skips the tool layer, meets the coordinator's check.
    assert jobs_count() == before
    assert_every_read_works(client)


def test_cli_params_and_input_are_parsed_strictly(store: StorageSettings) -> None:
    runner = CliRunner()
    before = jobs_count()
    for args, needle in [
        (["jobs", "submit", "sleep", "--params", '{"echo": NaN}'], "NaN is not JSON"),
        (["jobs", "submit", "sleep", "--params", '{"echo": "\\ud800"}'], "params.echo"),
        (["jobs", "submit", "sleep", "--params", "[" * 100 + "]" * 100], "nested too deeply"),
        (["run", "text-stats", "word_count", "--input", '{"text": Infinity}'], "Infinity"),
    ]:
        result = runner.invoke(cli_app, args)
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.output
    assert jobs_count() == before


def test_schedule_params_are_checked_at_start_up() -> None:
    """TOML has `nan` and `inf`; a schedule holding one is a settings error, not a poisoned
    job a minute later."""
    schedule = ScheduleSettings(name="bad", cron="* * * * *", type="sleep", params={"echo": 1})
    settings = actors.settings
    check_schedules(actors.broker, dataclasses.replace(settings, schedules=(schedule,)))
    for value in [float("nan"), float("inf"), [1, -float("inf")]]:
        bad = dataclasses.replace(schedule, params={"echo": value})
        with pytest.raises(SettingsError, match=r"schedules\[0\]\.params"):
            check_schedules(actors.broker, dataclasses.replace(settings, schedules=(bad,)))


def test_a_result_that_cannot_be_stored_fails_the_job(store: StorageSettings) -> None:
    """The JobStatus middleware, for any job type: the job fails cleanly instead of
    poisoning every listing."""
    coordinator = JobCoordinator(actors.broker, actors.settings)
    job = coordinator.submit_job({"type": "sleep"}).job
    message = actors.broker.get_actor("sleep").message_with_options(**{JOB_ID_OPTION: job.id})
    middleware = JobStatus()
    middleware.before_process_message(actors.broker, message)
    assert message.options[ATTEMPT_OPTION] == 1
    middleware.after_process_message(
        actors.broker, message, result={"ok": [1.0, float("nan")], "text": "\ud800"}
    )
    failed = coordinator.get_job(job.id)
    assert (failed.state, failed.result) == ("failed", None)
    assert failed.error_type == "ResultNotSerializable"
    assert "result.ok.1: not a finite number" in failed.error_message
    with connection():
        assert jobs.list_jobs(limit=100).total >= 1


def test_error_texts_with_nul_and_surrogates_are_stored(store: StorageSettings) -> None:
    """An exception's text (a tool's stderr, a file name) may hold NUL or a lone surrogate:
    PostgreSQL refuses both, and a failure that cannot be recorded leaves its job running."""
    coordinator = JobCoordinator(actors.broker, actors.settings)
    job = coordinator.submit_job({"type": "sleep"}).job
    with connection():
        assert jobs.mark_running(job.id, attempt=1, worker_id="w")
        assert jobs.set_progress(job.id, float("nan"), "step\x00 \udcff")
        assert jobs.mark_failed(job.id, attempt=1, error_type="X\x00", error_message="a\x00\ud800")
    failed = coordinator.get_job(job.id)
    assert failed.state == "failed"
    assert failed.progress is None and "\x00" not in failed.message
    assert failed.error_message.encode("utf-8") and "\x00" not in failed.error_message


def test_a_nan_timeout_never_reaches_a_worker(store: StorageSettings) -> None:
    """jsonschema takes NaN for a number within `maximum`; the job ran and was retried."""
    coordinator = JobCoordinator(actors.broker, actors.settings)
    params = {"skill": "text-stats", "tool": "word_count", "input": {"text": "a"}}
    for bad in [float("nan"), float("inf")]:
        with pytest.raises(InvalidParams) as raised:
            coordinator.submit_job(
                {"type": "execute_skill", "params": {**params, "timeout_secs": bad}}
            )
        assert raised.value.details[0]["path"] == "params.timeout_secs"
    assert jobs_count() == 0


def test_execute_skill_refuses_a_bad_timeout_without_a_retry() -> None:
    from skillq.actors.skills import execute, execute_skill

    with pytest.raises(InvalidParams, match="timeout_secs"):
        execute("text-stats", "word_count", {"text": "a"}, float("nan"))
    assert InvalidParams in execute_skill.options["throws"]


def test_storable_problems_bounds_and_depth() -> None:
    assert storable_problems({"a": [1, 2.5, "x", None, True, {"b": "\x00"}]}, "p") == []
    assert storable_problems(10**4000 - 1, "p") == []
    assert storable_problems(10**4000, "p")[0]["path"] == "p"
    assert storable_problems(-(10**4000), "p")[0]["message"].startswith("integer out of range")
    nested: list = []
    for _ in range(70):
        nested = [nested]
    assert "nested too deeply" in storable_problems(nested, "p")[0]["message"]
    assert len(storable_problems([float("nan")] * 100, "p")) == 10
    assert storable_problems({1: "x"}, "p")[0]["message"] == "object keys must be strings, not int"
    with pytest.raises(Exception, match="not valid JSON"):
        parse_json("[" * 65 + "]" * 65)


# --- finding 5: an idempotency key never hands out another request's job ---------------


def test_rest_same_key_different_request_is_409_naming_the_first_job(client: TestClient) -> None:
    key = uuid.uuid4().hex
    params = {"seconds": 0, "echo": [1, {"a": None}]}
    first = client.post(
        "/api/v1/jobs", json={"type": "sleep", "params": params, "idempotency_key": key}
    )
    assert first.status_code == 202
    job_id = first.json()["id"]
    same = {"type": "sleep", "params": params, "idempotency_key": key, "trace_id": "t2"}
    for retry in [{"priority": "normal"}, {"params": {"echo": [1.0, {"a": None}], "seconds": 0}}]:
        again = client.post("/api/v1/jobs", json={**same, **retry})
        assert (again.status_code, again.json()["id"]) == (200, job_id)
    for different in [
        {"params": {"seconds": 0, "echo": [True, {"a": None}]}},
        {"params": {"seconds": 0, "echo": [1, {"a": None, "b": 1}]}},
        {"params": {"seconds": 0}},
        {"priority": 9},
        {
            "type": "execute_skill",
            "params": {"skill": "text-stats", "tool": "word_count", "input": {"text": "a"}},
        },
    ]:
        response = client.post("/api/v1/jobs", json={**same, **different})
        assert response.status_code == 409, (different, response.text)
        error = response.json()["error"]
        assert error["code"] == "idempotency_key_reused"
        assert job_id in error["message"]
        assert error["details"][0]["job_id"] == job_id
        assert error["details"][0]["path"] == "body.idempotency_key"
    assert jobs_count() == 1


def test_mcp_same_key_different_tool_is_a_tool_error_not_the_other_result(
    client: TestClient,
) -> None:
    options = {"skillq/job_options": {"idempotency_key": "K"}, "skillq/inline_wait_secs": 0}
    first = mcp_call(client, "sleep", '{"seconds": 0}', **options)
    job_id = first["_meta"]["skillq/job"]["id"]
    again = mcp_call(client, "sleep", '{"seconds": 0}', **options)
    assert again["_meta"]["skillq/job"]["id"] == job_id
    other = mcp_call(client, "text-stats.word_count", '{"text": "one two"}', **options)
    assert other["isError"] is True, other
    error = other["structuredContent"]["error"]
    assert error["code"] == "idempotency_key_reused"
    assert error["details"][0]["job_id"] == job_id


def test_cli_same_key_different_request_exits_4(store: StorageSettings) -> None:
    runner = CliRunner()
    submit = ["jobs", "submit", "sleep", "--idempotency-key", "cli-key", "--params"]
    first = runner.invoke(cli_app, [*submit, '{"seconds": 0}'])
    assert first.exit_code == 0, first.output
    job_id = first.output.strip()
    assert runner.invoke(cli_app, [*submit, '{"seconds": 0}']).output.strip() == job_id
    other = runner.invoke(cli_app, [*submit, '{"seconds": 1}'])
    assert other.exit_code == 4, other.output
    assert job_id in other.output and "different params" in other.output


def test_the_coordinator_race_path_compares_too(
    store: StorageSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two submits with one key racing: the loser's insert hits the unique index, and it
    too gets the first job only for the same request."""
    coordinator = JobCoordinator(actors.broker, actors.settings)
    K = "race"
    job = coordinator.submit_job({"type": "sleep", "idempotency_key": K}).job
    original, looks = jobs.find_by_idempotency_key, []

    def first_look_misses(owner: str, key: str):
        looks.append(key)
        return None if len(looks) == 1 else original(owner, key)

    monkeypatch.setattr(jobs, "find_by_idempotency_key", first_look_misses)
    with pytest.raises(IdempotencyKeyReused) as raised:
        coordinator.submit_job({"type": "sleep", "params": {"seconds": 2}, "idempotency_key": K})
    assert raised.value.details[0]["job_id"] == job.id
    assert len(looks) == 2  # the race path looked again


# --- finding 9: answers neither leak nor balloon ----------------------------------------


def test_a_huge_bad_value_is_echoed_cut_short(client: TestClient) -> None:
    huge = "x" * 900_000  # under the body limit, still far too much to echo
    for body in [
        {"type": "sleep", "params": {"seconds": huge}},
        {"type": "sleep", "params": {"steps": [huge]}},
        {"type": huge},
    ]:
        response = client.post("/api/v1/jobs", json=body)
        assert response.status_code == 422, response.text[:300]
        assert len(response.content) < 2000
    result = mcp_call(client, "sleep", json.dumps({"seconds": huge}))
    assert result["isError"] and len(json.dumps(result)) < 3000
    result = mcp_call(client, huge, "{}")
    assert result["isError"] and len(json.dumps(result)) < 3000


def test_messages_quote_json_not_python(client: TestClient) -> None:
    response = client.post(
        "/api/v1/jobs", json={"type": "sleep", "params": {"seconds": None, "fail": 1, "x": True}}
    )
    details = response.json()["error"]["details"]
    assert {"path": "params.seconds", "message": 'null is not of type "number"'} in details
    assert {"path": "params.fail", "message": '1 is not of type "boolean"'} in details
    assert {"path": "params", "message": 'unexpected properties: "x"'} in details
    text = json.dumps(details)
    assert "None" not in text and "True" not in text and "'" not in text
    missing = client.post("/api/v1/jobs", json={"type": "index_documents", "params": {}})
    assert missing.json()["error"]["details"] == [
        {"path": "params", "message": 'missing required properties: "collection"'}
    ]


def test_an_unknown_skill_names_what_was_looked_up_not_where(
    client: TestClient, tmp_path: Path
) -> None:
    response = client.post(
        "/api/v1/jobs", json={"type": "execute_skill", "params": {"skill": "nope", "tool": "x"}}
    )
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["message"] == 'no skill named "nope"'
    text = json.dumps(error)
    assert "/" not in text and "site-packages" not in text


def test_a_collection_being_created_is_listed_empty_and_searched_as_missing(
    tmp_path: Path,
) -> None:
    """Found by schemathesis's stateful phase: the listing raced an index job that had
    created the collection's file but not yet its tables, and answered 500."""
    from skillq.engine.search import Collections
    from skillq.errors import NotFound

    collections = Collections(tmp_path)
    tmp_path.joinpath("fresh.db").write_bytes(b"")  # the file, no tables yet
    assert collections.names() == ["fresh"]
    assert collections.count("fresh") == 0
    with pytest.raises(NotFound):
        collections.search("fresh", "word")


def test_a_query_without_words_matches_nothing_an_empty_one_is_422(tmp_path: Path) -> None:
    """Found by schemathesis (ST201): the document's `\\w` is ASCII in ECMA-262, the
    server's words are in any script; now any non-empty q is valid, as documented."""
    from skillq.engine.search import Collections

    collections = Collections(tmp_path)
    collections.index("docs", [{"id": "1", "text": "ʈʝ żółw"}])
    assert collections.search("docs", "?!") == []
    assert [hit.id for hit in collections.search("docs", ".ʈʝ¿")] == ["1"]
    with TestClient(create_app()) as client:
        error = client.get("/api/v1/collections/docs/search", params={"q": ""}).json()["error"]
        assert (error["code"], error["details"][0]["path"]) == ("invalid_params", "q")
