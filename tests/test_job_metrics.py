"""Job metrics kept in the store: exact under concurrent writers, and `/metrics` of every API
process agrees with a known workload run by two worker processes."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from skillq.settings import StorageSettings
from skillq.storage import job_metrics, jobs
from skillq.storage.database import connection, database_proxy
from skillq.storage.job_metrics import JobMetric
from skillq.storage.migrations import downgrade, upgrade
from skillq.storage.models import utcnow
from tests.reliability import Stack
from tests.support import ChildProcess, start_api, wait_for

# --- the store ---------------------------------------------------------------------------


def test_counters_and_histograms_add_up(store: StorageSettings) -> None:
    job_metrics.count("sleep", "completed")
    job_metrics.count("sleep", "completed")
    job_metrics.count("index_documents", "failed")
    for seconds in (0.01, 0.05, 0.3, 7, 5000):
        job_metrics.observe("sleep", "run_seconds", seconds)
    job_metrics.observe("sleep", "run_seconds", -1)  # a clock step back counts as zero

    assert job_metrics.counters() == {("completed", "sleep"): 2, ("failed", "index_documents"): 1}
    run = job_metrics.histograms()[("run_seconds", "sleep")]
    cumulative = dict(run.buckets)
    assert run.count == 6
    assert run.sum == pytest.approx(0.01 + 0.05 + 0.3 + 7 + 5000)
    # Upper bounds are inclusive (le): 0.05 falls in the 0.05 bucket.
    assert cumulative["0.05"] == 3
    assert cumulative["0.5"] == 4
    assert cumulative["10"] == 5
    assert cumulative["3600"] == 5
    assert cumulative["+Inf"] == 6
    assert [label for label, _ in run.buckets][-1] == "+Inf"
    assert len(run.buckets) == len(job_metrics.BUCKETS)


def test_unknown_metric_names_are_refused(store: StorageSettings) -> None:
    with pytest.raises(ValueError, match="unknown job counter"):
        job_metrics.count("sleep", "exploded")
    with pytest.raises(ValueError, match="unknown job histogram"):
        job_metrics.observe("sleep", "completed", 1.0)
    assert job_metrics.counters() == {}


def test_concurrent_writers_lose_no_count(store: StorageSettings) -> None:
    """Several processes' threads add to the same new row at once (an upsert each)."""
    errors: list[BaseException] = []

    def add() -> None:
        try:
            with connection():
                for _ in range(25):
                    job_metrics.count("sleep", "completed")
                    job_metrics.observe("sleep", "wait_seconds", 0.2)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=add) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert job_metrics.counters()[("completed", "sleep")] == 100
    assert job_metrics.histograms()[("wait_seconds", "sleep")].count == 100


def _job(job_id: str, job_type: str = "sleep") -> None:
    jobs.insert_job(
        id=job_id,
        type=job_type,
        queue="default",
        params={},
        priority=5,
        max_retries=1,
        expires_at=utcnow(),
        owner="local",
        trace_id=None,
        idempotency_key=None,
    )


def test_each_transition_counts_once_and_purging_keeps_the_counts(store: StorageSettings) -> None:
    _job("a")
    _job("b")
    _job("c", "index_documents")
    assert jobs.mark_running("a", attempt=1, worker_id="w", wait_seconds=0.2)
    assert jobs.mark_retrying("a", attempt=1, error_type="E", error_message="m", run_seconds=3)
    assert not jobs.mark_retrying("a", attempt=1, error_type="E", error_message="m")
    assert jobs.mark_running("a", attempt=2, worker_id="w")  # the retry starts: counted
    assert not jobs.mark_running("a", attempt=2, worker_id="w2")  # a duplicate: not counted
    assert jobs.mark_completed("a", attempt=2, result=None, run_seconds=1)
    # A repeat changes nothing, its duration included.
    assert not jobs.mark_completed("a", attempt=2, result=None, run_seconds=1)
    assert jobs.cancel_pending("b")
    assert not jobs.cancel_pending("b")
    assert jobs.mark_enqueue_failed("c", "refused")

    expected = {
        ("retried", "sleep"): 1,
        ("completed", "sleep"): 1,
        ("cancelled", "sleep"): 1,
        ("failed", "index_documents"): 1,
    }
    assert job_metrics.counters() == expected
    histograms = job_metrics.histograms()
    assert histograms[("wait_seconds", "sleep")].count == 1
    assert (
        histograms[("run_seconds", "sleep")].count,
        histograms[("run_seconds", "sleep")].sum,
    ) == (2, 4)
    assert jobs.purge_expired(now=utcnow().replace(year=2100)) == 3
    assert job_metrics.counters() == expected


# --- a known workload, two worker processes, two API processes ----------------------------

WORKLOAD_JOBS = """\
from pathlib import Path

import skillq


@skillq.job_type(max_retries=0)
def always_fails(n: int = 0) -> None:
    raise RuntimeError("told to fail")


@skillq.job_type(max_retries=2)
def fails_once(flag: str) -> dict:
    path = Path(flag)
    if not path.exists():
        path.write_text("failed once")
        raise RuntimeError("the first attempt fails")
    return {"second": True}
"""


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, list[str]]]:
    directory = tmp_path_factory.mktemp("metrics")
    (directory / "metrics_workload.py").write_text(WORKLOAD_JOBS)
    with pytest.MonkeyPatch.context() as patch:
        # The API and worker processes import the job types from here (child_env keeps it).
        patch.setenv("PYTHONPATH", str(directory))
        stack = Stack.create("sqlite", directory, extra={"jobs": {"modules": ["metrics_workload"]}})
        second_api = None
        try:
            stack.start_api()
            second_api, second_url = start_api(stack.settings_path, directory)
            # `skillq worker --processes 2`: two dramatiq worker processes, as in production.
            worker = ChildProcess(
                "worker",
                ["-m", "skillq", "worker", "--processes", "2", "--threads", "2"],
                stack.settings_path,
                directory,
            )
            stack.workers.append(worker)
            wait_for(
                lambda: worker.log().count("Worker process is ready") >= 2 or not worker.alive(),
                timeout=60,
                what="both worker processes to boot",
            )
            assert worker.alive(), worker.log()
            yield stack, [stack.base_url, second_url]
        finally:
            if second_api is not None:
                second_api.stop()
            stack.close()


PARTS = ("bucket", "count", "sum")


def _scrape(base_url: str) -> dict[str, dict[tuple, float]]:
    """`{sample name: {sorted labels: value}}` from one API process's /metrics."""
    response = httpx.get(f"{base_url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def _value(samples: dict[str, dict[tuple, float]], name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def test_metrics_match_a_known_workload(workload: tuple[Stack, list[str]]) -> None:
    stack, api_urls = workload
    flag = stack.directory / "fails-once.flag"
    submitted = [stack.submit({"type": "sleep", "params": {"seconds": 0.05}}) for _ in range(5)]
    submitted += [stack.submit({"type": "always_fails", "params": {"n": n}}) for n in range(2)]
    submitted.append(stack.submit({"type": "fails_once", "params": {"flag": str(flag)}}))
    long = stack.submit({"type": "sleep", "params": {"seconds": 100, "steps": 1000}})
    stack.wait_state(long["id"], {"running"})
    # A running job shows in the worker registry at the next beat.
    wait_for(
        lambda: _value(_scrape(api_urls[1]), "skillq_jobs_running") >= 1,
        what="the running job to show in /metrics",
    )
    assert stack.cancel(long["id"]).status_code == 202
    stack.wait_state(long["id"], {"cancelled"})
    states = [stack.wait_state(job["id"], {"completed", "failed"})["state"] for job in submitted]
    assert states == ["completed"] * 5 + ["failed"] * 2 + ["completed"]
    assert stack.job(submitted[-1]["id"])["attempts"] == 2

    # Both API processes serve the same totals: what the workers wrote to the store.
    first, second = (_scrape(url) for url in api_urls)
    job_families = ("skillq_jobs_", "skillq_job_")
    per_process = {"skillq_jobs_running"} | {n for n in first if "_submitted" in n}
    shared = {n for n in first if n.startswith(job_families)} - per_process
    # No job type of this workload has a limit, so nothing was postponed (no sample).
    counted = set(job_metrics.COUNTERS) - {"postponed"}
    counters = {f"skillq_jobs_{name}_total" for name in counted}
    histograms = {f"skillq_job_{h}_{part}" for h in job_metrics.HISTOGRAMS for part in PARTS}
    assert shared == counters | histograms
    for name in shared:
        assert first[name] == second[name], name

    expected_counts = {
        ("skillq_jobs_completed_total", "sleep"): 5,
        ("skillq_jobs_completed_total", "fails_once"): 1,
        ("skillq_jobs_failed_total", "always_fails"): 2,
        ("skillq_jobs_cancelled_total", "sleep"): 1,
        ("skillq_jobs_retried_total", "fails_once"): 1,
    }
    for (name, job_type), count in expected_counts.items():
        assert _value(first, name, type=job_type) == count, (name, job_type)
    for name in ("skillq_jobs_failed_total", "skillq_jobs_retried_total"):
        assert _value(first, name, type="sleep") == 0
    assert sum(first["skillq_jobs_completed_total"].values()) == 6

    # Every attempt's run time (the cancelled one too), each job's first wait.
    runs = {"sleep": 6, "always_fails": 2, "fails_once": 2}
    waits = {"sleep": 6, "always_fails": 2, "fails_once": 1}
    for job_type in runs:
        assert _value(first, "skillq_job_run_seconds_count", type=job_type) == runs[job_type]
        assert _value(first, "skillq_job_wait_seconds_count", type=job_type) == waits[job_type]
        infinite = _value(first, "skillq_job_run_seconds_bucket", type=job_type, le="+Inf")
        assert infinite == runs[job_type]
    # The cancelled sleep ran until cancelled, the other five about 0.05 s each.
    assert _value(first, "skillq_job_run_seconds_sum", type="sleep") > 5 * 0.05
    assert _value(first, "skillq_job_run_seconds_bucket", type="sleep", le="0.05") == 0
    assert _value(first, "skillq_job_run_seconds_bucket", type="sleep", le="3600") == 6

    # Two processes per queue's pool, each one worker in the registry.
    registry = httpx.get(f"{api_urls[0]}/api/v1/workers", timeout=10).json()
    assert registry["counts"]["alive"] >= 2

    # /metrics and the listing count the same registry; read both at once (a pool process
    # still registering may join between two reads taken apart).
    def alive_in_both() -> bool:
        listed = httpx.get(f"{api_urls[0]}/api/v1/workers", timeout=10).json()["counts"]["alive"]
        return _value(_scrape(api_urls[0]), "skillq_workers", status="alive") == listed

    wait_for(alive_in_both, timeout=30, what="/metrics and the worker listing to agree")
    assert _value(first, "skillq_workers", status="dead") == 0
    assert 0 < _value(first, "skillq_job_wait_seconds_sum", type="sleep") < math.inf
    wait_for(
        lambda: _value(_scrape(api_urls[0]), "skillq_jobs_running") == 0,
        what="no job running in /metrics",
    )


def test_writer_threads_add_to_shards_of_their_own_and_readers_sum_them(
    store: StorageSettings,
) -> None:
    """Each thread adds to its own shard of a row (no thread waits for another's row lock),
    and schema version 17 keeps the counts a version-16 store held; a downgrade sums the
    shards back into one row each."""
    shards: set[int] = set()

    def add() -> None:
        with connection():
            job_metrics.count("sleep", "completed")
            job_metrics.observe("sleep", "run_seconds", 0.2)
        shards.add(job_metrics.writer_shard())

    threads = [threading.Thread(target=add) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(shards) == 4
    stored = JobMetric.select().where(JobMetric.name == "completed")
    assert sorted(row.shard for row in stored) == sorted(shards)

    downgrade(16)
    rows = database_proxy.execute_sql(
        "SELECT name, bucket, observations, total FROM skillq_job_metric ORDER BY name"
    ).fetchall()
    assert [(name, bucket, count) for name, bucket, count, _ in rows] == [
        ("completed", "", 4),
        ("run_seconds", "0.25", 4),
    ]
    upgrade()
    assert job_metrics.counters() == {("completed", "sleep"): 4}
    histogram = job_metrics.histograms()[("run_seconds", "sleep")]
    assert histogram.count == 4 and histogram.sum == pytest.approx(0.8)
    assert {row.shard for row in JobMetric.select()} == {0}
