"""The schemathesis command, as a user would run it, against real API and worker processes
(SQLite and PostgreSQL): every phase, every check, the stateful one included.

`SKILLQ_FUZZ_EXAMPLES` (default 25) sets the examples per operation.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from schemathesis.core.warnings import SchemathesisWarning

from tests.openapi_hooks import FUZZED_BATCH_JOBS
from tests.support import (
    ROOT,
    api_with_worker,
    create_postgres_schema,
    drop_postgres_schema,
    postgres_schema_url,
    require_service,
    wait_for,
)

MAX_EXAMPLES = int(os.environ.get("SKILLQ_FUZZ_EXAMPLES", "25"))
CONFIG_FILE = Path(__file__).with_name("schemathesis.toml")


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def live_api(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[str]:
    """A real API and worker on each store, with one indexed collection, so search reaches
    its own logic instead of answering 404."""
    directory = tmp_path_factory.mktemp(f"openapi-live-{request.param}")
    storage: dict = {}
    schema = None
    if request.param == "postgres":
        require_service("postgres")
        schema = create_postgres_schema()
        storage = {"backend": "postgres", "url": postgres_schema_url(schema)}
    # Small batches (FUZZED_BATCH_JOBS): a fuzzed batch of 1,000 jobs could also outlast
    # the run's 2 s request timeout on a loaded machine.
    sections = {
        "server": {"data_dir": str(directory / "data")},
        "storage": storage,
        "jobs": {"max_batch_jobs": FUZZED_BATCH_JOBS},
    }
    try:
        with api_with_worker(directory, {k: v for k, v in sections.items() if v}) as url:
            documents = [{"id": "d1", "text": "żółw and tortoise notes"}]
            submitted = httpx.post(
                f"{url}/api/v1/jobs",
                json={
                    "type": "index_documents",
                    "params": {"collection": "notes", "documents": documents},
                },
            ).json()
            wait_for(
                lambda: (
                    httpx.get(f"{url}/api/v1/jobs/{submitted['id']}").json()["state"] == "completed"
                ),
                what="the collection to be indexed",
            )
            yield url
    finally:
        if schema:
            drop_postgres_schema(schema)


def schemathesis_run(url: str, workdir: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """The schemathesis command, every check, as a user would run it (its cache and
    reports go to `workdir`, not the checkout)."""
    command = Path(sys.executable).with_name("schemathesis")
    return subprocess.run(
        [
            str(command),
            "--config-file",
            str(CONFIG_FILE),
            "run",
            f"{url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            str(MAX_EXAMPLES),
            # An event stream of a job that runs for an hour is cut here: it is not a failure.
            "--request-timeout",
            "2",
            "--generation-database",
            "none",
            "--no-color",
            # Every warning but "only 401/403": the worker routes answer only worker tokens
            # (tests/test_remote_workers.py calls them with one), and this run has none.
            "--warnings",
            ",".join(
                w.value for w in SchemathesisWarning if w is not SchemathesisWarning.MISSING_AUTH
            ),
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=workdir,
        env={**child_env_of_hooks(), "SCHEMATHESIS_HOOKS": "tests.openapi_hooks"},
    )


def child_env_of_hooks() -> dict[str, str]:
    """The command's environment, able to import tests/openapi_hooks.py from the checkout."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


@pytest.mark.parametrize(
    "phases",
    [
        pytest.param(["--phases", "examples,coverage,fuzzing"], id="stateless"),
        # DELETE /api/v1/jobs/{id} cancels (DESIGN.md) and the job stays readable; the
        # document marks it a deprecated alias of POST .../cancel, which is how it tells
        # the stateful phase not to expect a 404 after it (ST301).
        pytest.param(["--phases", "stateful", "--exclude-deprecated"], id="stateful"),
    ],
)
@pytest.mark.timeout(900)  # the subprocess has its own limit; this is the backstop
def test_the_schemathesis_command_finds_nothing(
    live_api: str, phases: list[str], tmp_path: Path
) -> None:
    result = schemathesis_run(live_api, tmp_path, *phases)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "passed" in result.stdout and "failed" not in result.stdout.split("SUMMARY")[-1]
