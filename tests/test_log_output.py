"""Log lines: JSON or console as `[logging] format` says, the job's ids on every line a worker
writes about a job, and a cancelled job logged as one INFO line without a traceback."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from skillq.brokers.cancellation import JobCancelled, _cancelled_job_records
from skillq.log_output import configure_logging, formatter
from skillq.settings import SettingsError, load_settings
from tests.reliability import Stack
from tests.support import wait_for

# --- formatting, in this process ------------------------------------------------------------


def _render(log_format: str, record: logging.LogRecord) -> str:
    return formatter(log_format).format(record)


def _record(msg: str, *args: object, exc_info: Any = None, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord(
        "dramatiq.worker.WorkerThread", logging.ERROR, __file__, 1, msg, args, exc_info
    )
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_the_bound_job_ids_and_the_traceback() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        exc_info = sys.exc_info()
    with structlog.contextvars.bound_contextvars(job_id="j1", trace_id="t1", worker_id="w1"):
        line = _render("json", _record("Failed %s", "job", exc_info=exc_info))
    event = json.loads(line)
    assert event["event"] == "Failed job"
    assert event["level"] == "error"
    assert event["logger"] == "dramatiq.worker.WorkerThread"
    assert (event["job_id"], event["trace_id"], event["worker_id"]) == ("j1", "t1", "w1")
    assert "RuntimeError: boom" in event["exception"]
    assert "timestamp" in event
    # Nothing stays bound outside the block.
    assert "job_id" not in json.loads(_render("json", _record("later")))


def test_extra_fields_and_odd_values_stay_one_json_line() -> None:
    line = _render("json", _record("line\nbreak \u2028 %s", object(), job_id="j2"))
    assert "\n" not in line
    assert json.loads(line)["job_id"] == "j2"


def test_console_lines_are_for_people() -> None:
    with structlog.contextvars.bound_contextvars(job_id="j3"):
        line = _render("console", _record("Cancelling job %s.", "j3"))
    assert "Cancelling job j3." in line
    assert "job_id=j3" in line
    assert "\x1b[" not in line  # no colour codes off a terminal
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_configure_logging_formats_every_root_handler_and_sets_the_level() -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    root.handlers = [logging.StreamHandler(stream)]
    try:
        configure_logging("json", "warning")
        logging.getLogger("dramatiq.worker").info("not shown")
        logging.getLogger("dramatiq.worker").warning("shown %d", 1)
        structlog.get_logger("skillq.test").error("native", job_id="j4")
    finally:
        root.handlers, root.level = saved
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["event"], e["level"]) for e in lines] == [
        ("shown 1", "warning"),
        ("native", "error"),
    ]
    assert lines[1]["job_id"] == "j4"


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="console, json"):
        formatter("xml")


@pytest.mark.parametrize(
    ("section", "key"), [('format = "xml"', "logging.format"), ('level = "loud"', "logging.level")]
)
def test_bad_logging_settings_are_one_line_errors(tmp_path: Path, section: str, key: str) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(f"[logging]\n{section}\n")
    with pytest.raises(SettingsError) as raised:
        load_settings(path)
    assert key in str(raised.value)
    assert "\n" not in str(raised.value)


def test_logging_defaults(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text("")
    settings = load_settings(path).logging
    assert (settings.format, settings.level) == ("console", "info")


# --- the cancelled-job filter ----------------------------------------------------------------


def _filtered(exception: BaseException) -> logging.LogRecord:
    try:
        raise exception
    except BaseException:
        record = _record(
            "Failed to process message %s with unhandled exception.", "m", exc_info=sys.exc_info()
        )
    assert _cancelled_job_records.filter(record)
    return record


def test_a_job_cancelled_record_becomes_one_info_line() -> None:
    record = _filtered(JobCancelled("job j5 was cancelled"))
    assert record.levelno == logging.INFO
    assert record.exc_info is None
    assert "Traceback" not in _render("json", record)


def test_other_failures_keep_their_error_and_traceback() -> None:
    record = _filtered(RuntimeError("real fault"))
    assert record.levelno == logging.ERROR
    assert "RuntimeError: real fault" in json.loads(_render("json", record))["exception"]


# --- a real worker process -------------------------------------------------------------------


@pytest.fixture(scope="module", params=["json", "console"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp(f"logs-{request.param}")
    running = Stack.create("sqlite", directory, extra={"logging": {"format": request.param}})
    try:
        running.start_api()
        running.start_worker()
        yield running
    finally:
        running.close()


def _worker_lines(stack: Stack) -> list[str]:
    """The worker's log, less dramatiq's parent process's own lines (its format, see
    skillq.log_output) and blank lines."""
    text = stack.workers[0].log_path.read_text(errors="replace")
    return [
        line for line in text.splitlines() if line.strip() and "[dramatiq.MainProcess]" not in line
    ]


def _run_workload(stack: Stack) -> dict[str, dict[str, Any]]:
    done = stack.submit({"type": "sleep", "params": {"seconds": 0.05}, "trace_id": "trace-ok"})
    failed = stack.submit(
        {"type": "sleep", "params": {"seconds": 0, "fail": True}, "trace_id": "trace-fail"}
    )
    cancelled = stack.submit(
        {"type": "sleep", "params": {"seconds": 100, "steps": 1000}, "trace_id": "trace-cancel"}
    )
    stack.wait_state(cancelled["id"], {"running"})
    assert stack.cancel(cancelled["id"]).status_code == 202
    stack.wait_state(cancelled["id"], {"cancelled"})
    stack.wait_state(done["id"], {"completed"})
    stack.wait_state(failed["id"], {"failed"}, timeout=60)
    return {"done": done, "failed": failed, "cancelled": cancelled}


def test_a_workers_lines_follow_the_format_and_name_the_job(stack: Stack) -> None:
    jobs = _run_workload(stack)
    log_format = stack.settings_path.read_text().split("[logging]")[1]
    as_json = '"json"' in log_format
    cancelled_id = jobs["cancelled"]["id"]
    # The failed job's ERROR line (with its traceback) is written once its retries are spent.
    wait_for(
        lambda: sum(jobs["failed"]["id"] in line for line in _worker_lines(stack)) >= 1,
        what="the failed job's lines",
    )
    lines = _worker_lines(stack)
    if as_json:
        events = [json.loads(line) for line in lines]  # every worker line is one JSON object
        for job in jobs.values():
            about = [e for e in events if job["id"] in json.dumps(e)]
            assert about, job
            for event in about:
                assert event["job_id"] == job["id"], event
                assert event["trace_id"] == job["trace_id"], event
                assert re.fullmatch(r".+:\d+", event["worker_id"]), event
        failure = [e for e in events if e.get("job_id") == jobs["failed"]["id"]]
        assert any(
            e["level"] == "error" and "RuntimeError: told to fail" in e.get("exception", "")
            for e in failure
        ), failure
        about_cancel = [e for e in events if e.get("job_id") == cancelled_id]
        assert [e["level"] for e in about_cancel if e["level"] != "info"] == []
        assert [e["event"] for e in about_cancel if "cancelled" in e["event"]] == [
            f"Job {cancelled_id} cancelled."
        ]
        assert not any("exception" in e for e in about_cancel)
    else:
        with pytest.raises(json.JSONDecodeError):
            json.loads(lines[-1])
        about_cancel = [line for line in lines if f"job_id={cancelled_id}" in line]
        assert [line for line in about_cancel if f"Job {cancelled_id} cancelled." in line]
        assert not [line for line in about_cancel if "[error" in line]
        assert any(f"job_id={jobs['done']['id']}" in line for line in lines)
    assert stack.api is not None
    api_lines = stack.api.log_path.read_text().splitlines()
    assert api_lines
    if as_json:
        for line in api_lines:  # uvicorn's lines too, without its colour-coded copy
            assert "color_message" not in json.loads(line), line
    text = "\n".join(lines)
    assert "JobCancelled" not in text
    assert text.count(f"Job {cancelled_id} cancelled.") == 1
