"""The three error tables (REST status, MCP JSON-RPC code, CLI exit status): a row for every
core error, each surface answering through its table, and the wire kept as it was.

A new class in `skillq.errors` without a row in every table fails
`test_every_core_error_has_a_row_in_every_table`; the pinned rows below are today's wire
and change only on purpose.
"""

from __future__ import annotations

import json

import mcp_types as types
import pytest
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

import skillq.engine.skills  # noqa: F401  (declares SkillError, a subclass outside the core)
from skillq import errors
from skillq.api.errors import EXCEPTION_HANDLERS, HTTP_STATUS
from skillq.api.mcp.errors import JSONRPC_CODES, protocol_error, tool_error
from skillq.cli.exit_status import EXIT_STATUS, report
from skillq.errors import SettingsError, SkillqError, row_of
from tests.support import LOCAL_URL

TABLES = {"rest": HTTP_STATUS, "mcp": JSONRPC_CODES, "cli": EXIT_STATUS}


def subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *subclasses(sub)}
    return found


def core_errors() -> list[type[SkillqError]]:
    """Every error class of the core, found by walking the hierarchy (not listed by hand)."""
    found = {SkillqError} | {c for c in subclasses(SkillqError) if c.__module__ == errors.__name__}
    return sorted(found, key=lambda c: c.__name__)


#: The wire as it stands: code, HTTP status, JSON-RPC code, exit status.
PINNED = {
    errors.SkillqError: ("internal_error", 500, types.INTERNAL_ERROR, 1),
    errors.InvalidRequest: ("invalid_request", 400, types.INVALID_PARAMS, 2),
    errors.InvalidParams: ("invalid_params", 422, types.INVALID_PARAMS, 2),
    errors.UnknownJobType: ("unknown_job_type", 422, types.INVALID_PARAMS, 2),
    errors.NotFound: ("not_found", 404, types.INVALID_PARAMS, 3),
    errors.Conflict: ("conflict", 409, types.INVALID_PARAMS, 4),
    errors.Unauthorized: ("unauthorized", 401, types.INVALID_PARAMS, 1),
    errors.Forbidden: ("forbidden", 403, types.INVALID_PARAMS, 1),
    errors.ServiceUnavailable: ("service_unavailable", 503, types.INTERNAL_ERROR, 5),
}


def test_the_walk_finds_the_core_errors() -> None:
    assert set(PINNED) <= set(core_errors())


@pytest.mark.parametrize("cls", core_errors(), ids=lambda c: c.__name__)
@pytest.mark.parametrize("surface", TABLES)
def test_every_core_error_has_a_row_in_every_table(surface: str, cls: type) -> None:
    # Its own row: inheriting an ancestor's would be a silent guess about a new kind.
    assert cls in TABLES[surface], f"{cls.__name__} has no row in the {surface} table"


def test_every_core_error_has_its_own_stable_code() -> None:
    codes = {cls: cls.__dict__.get("code") for cls in core_errors()}
    assert all(isinstance(code, str) and code.isidentifier() for code in codes.values()), codes
    every = [cls.code for cls in {SkillqError, *subclasses(SkillqError)}]
    assert len(every) == len(set(every)), "two error classes share a code"


def test_core_errors_carry_no_transport_status() -> None:
    for cls in core_errors():
        assert not {"status_code", "status", "exit_code"} & set(vars(cls)), cls


@pytest.mark.parametrize("cls", list(PINNED), ids=lambda c: c.__name__)
def test_the_rows_keep_the_wire(cls: type[SkillqError]) -> None:
    code, status, jsonrpc, exit_status = PINNED[cls]
    assert (cls.code, HTTP_STATUS[cls], JSONRPC_CODES[cls], EXIT_STATUS[cls]) == (
        code,
        status,
        jsonrpc,
        exit_status,
    )


def test_an_outage_is_never_the_clients_fault_on_any_surface() -> None:
    outage = errors.ServiceUnavailable("the job store is unavailable")
    assert row_of(HTTP_STATUS, outage) == 503
    assert row_of(JSONRPC_CODES, outage) != types.INVALID_PARAMS
    assert protocol_error(outage).error.data["code"] == "service_unavailable"
    assert row_of(EXIT_STATUS, outage) == 5


def test_every_subclass_anywhere_resolves_to_a_row() -> None:
    """A subclass outside the core (the engine's bad-manifest error) takes its ancestor's."""
    from skillq.engine.skills import SkillError

    for cls in subclasses(SkillqError):
        for table in TABLES.values():
            row_of(table, cls("x"))
    bad_skill = SkillError("skill.toml: tools must be an array of tables")
    rows = [row_of(table, bad_skill) for table in TABLES.values()]
    assert rows == [422, types.INVALID_PARAMS, 2]
    assert bad_skill.code == "invalid_skill"


def test_a_class_without_a_row_is_a_lookup_error() -> None:
    with pytest.raises(LookupError, match="ValueError"):
        row_of(HTTP_STATUS, ValueError("not ours"))


# REST: the exception handlers build every envelope from the table.


def _raising_app(error: Exception) -> TestClient:
    async def endpoint(request):
        raise error

    app = Starlette(routes=[Route("/", endpoint)], exception_handlers=EXCEPTION_HANDLERS)
    return TestClient(app, raise_server_exceptions=False, base_url=LOCAL_URL)


@pytest.mark.parametrize("cls", core_errors(), ids=lambda c: c.__name__)
def test_rest_answers_each_core_error_from_its_row(cls: type[SkillqError]) -> None:
    details = [{"path": "params.x", "message": "is wrong"}]
    response = _raising_app(cls("what went wrong", details)).get("/")
    assert response.status_code == HTTP_STATUS[cls]
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "error": {"code": cls.code, "message": "what went wrong", "details": details}
    }
    challenged = "www-authenticate" in response.headers
    assert challenged == (response.status_code == 401)


def test_rest_hides_an_unexpected_error_behind_the_envelope() -> None:
    response = _raising_app(KeyError("secret internals")).get("/")
    assert response.status_code == 500
    assert response.json()["error"] == {
        "code": "internal_error",
        "message": "internal server error",
        "details": None,
    }
    assert "secret" not in response.text


# MCP: a tools/call gets a tool error; other requests a JSON-RPC error from the table.


@pytest.mark.parametrize("cls", core_errors(), ids=lambda c: c.__name__)
def test_mcp_answers_each_core_error_from_its_row(cls: type[SkillqError]) -> None:
    details = [{"path": "arguments.x", "message": "is wrong"}]
    error = cls("what went wrong", details)
    result = tool_error(error)
    assert result.is_error
    assert result.structured_content == {
        "error": {"code": cls.code, "message": "what went wrong", "details": details}
    }
    assert result.content[0].text.splitlines() == [
        f"{cls.code}: what went wrong",
        "  arguments.x: is wrong",
    ]
    raised = protocol_error(error)
    assert (raised.error.code, raised.error.message) == (JSONRPC_CODES[cls], "what went wrong")
    assert raised.error.data == {"code": cls.code, "details": details}
    json.dumps(raised.error.model_dump(mode="json"))


# CLI: one line per error and detail on stderr, then the table's exit status.


@pytest.mark.parametrize("cls", core_errors(), ids=lambda c: c.__name__)
def test_cli_reports_each_core_error_with_its_row(
    cls: type[SkillqError], capsys: pytest.CaptureFixture[str]
) -> None:
    status = report(cls("what went wrong", [{"path": "--params.x", "message": "is wrong"}]))
    assert status == EXIT_STATUS[cls]
    assert capsys.readouterr().err.splitlines() == [
        "error: what went wrong",
        "  --params.x: is wrong",
    ]


def test_cli_reports_a_settings_error_as_its_own_line_with_status_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    error = SettingsError("must be at least 1", key="workers.processes", source="prod.toml")
    assert report(error) == 2
    assert capsys.readouterr().err == "settings error in prod.toml: workers.processes: " + (
        "must be at least 1\n"
    )
