"""Global limits per job type, end to end: 3 worker processes of 4 threads each, on the SQLite,
Redis and RabbitMQ brokers, with the jobs recording their own start and end times.

One test per broker runs everything on the same processes (their start-up is the slow part):
a type limited to 2 at once never runs 3, a `5/second` type never starts 6 within a second,
an unlimited type on the same queue is not held up, every postponed job completes exactly
once without a retry counted, one owner's backlog does not hold up another owner's job, an
owner's `max_running` holds while another owner's job runs beside, and a worker SIGKILLed
while holding a slot does not keep it.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import jwt
import pytest

from tests.support import (
    RABBITMQ_URL,
    REDIS_URL,
    ChildProcess,
    require_service,
    start_api,
    wait_for,
    write_settings,
)
from tests.test_pools import max_overlap, runs

WORKER_ARGS = ("-m", "dramatiq", "skillq.actors", "--processes", "1", "--threads", "4")
SECRET = "limits-test-secret-" + "l" * 32
RATE_COUNT = 5
#: Jobs of the `5/second` type in the batch: at least 9 s of starts on each broker.
RATED_JOBS = 50
#: Time between a job taking its rate slot and its first line in the record (the rest of the
#: middleware, then the actor body); starts are compared with this slack, generous for a
#: loaded machine (without the limit the gaps are about 0.02 s).
RECORD_SLACK_SECS = 0.3


def bearer(subject: str) -> dict[str, str]:
    now = int(time.time())
    claims = {"sub": subject, "roles": ["submitter"], "iss": "skillq", "aud": "skillq-api"}
    token = jwt.encode({**claims, "iat": now, "exp": now + 900}, SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Limited:
    broker: str
    url: str
    record: Path
    queue: str
    settings_path: Path
    directory: Path
    workers: list[ChildProcess] = field(default_factory=list)

    def submit(self, job_type: str, tag: str, seconds: float, owner: str = "alice") -> str:
        params = {"record": str(self.record), "tag": tag, "seconds": seconds}
        response = httpx.post(
            f"{self.url}/api/v1/jobs",
            json={"type": job_type, "params": params},
            headers=bearer(owner),
            timeout=30,
        )
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def submit_all(self, jobs: list[tuple[str, str, float]], owner: str = "alice") -> list[str]:
        """Submitted at once from several threads, so they queue up faster than they run."""
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda job: self.submit(*job, owner=owner), jobs))

    def jobs(self, job_ids: list[str], owner: str = "alice") -> list[dict]:
        with httpx.Client(base_url=self.url, headers=bearer(owner), timeout=30) as client:
            return [client.get(f"/api/v1/jobs/{job_id}").json() for job_id in job_ids]

    def wait_finished(self, job_ids: list[str], owner: str = "alice") -> list[dict]:
        def finished() -> list[dict] | None:
            found = self.jobs(job_ids, owner)
            done = all(job["state"] in ("completed", "failed", "cancelled") for job in found)
            return found if done else None

        try:
            return wait_for(finished, timeout=180, what="every job to finish")
        except AssertionError:
            print("\n".join(worker.log() for worker in self.workers))
            raise

    def start_workers(self) -> None:
        """The three worker processes, booted side by side (once per broker)."""
        if self.workers:
            return
        for _ in range(3):
            args = [*WORKER_ARGS, "--queues", self.queue]
            self.workers.append(ChildProcess("worker", args, self.settings_path, self.directory))
        wait_for(
            lambda: all(w.logged("Worker process is ready") for w in self.workers),
            timeout=180,
            what="the workers to boot",
        )


def _cleanup_rabbitmq(queue: str) -> None:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    channel = connection.channel()
    for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
        channel.queue_delete(name)
    connection.close()


@pytest.fixture(scope="module", params=["sqlite", "redis", "rabbitmq"])
def limited(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Limited]:
    broker = request.param
    if broker != "sqlite":
        require_service(broker)
    directory = tmp_path_factory.mktemp(f"limits-{broker}")
    queue = f"limits_{uuid.uuid4().hex[:10]}"
    os.environ["SKILLQ_TEST_LIMITS_QUEUE"] = queue
    sections: dict[str, dict] = {
        "server": {"data_dir": str(directory / "data")},
        "broker": {"backend": broker, "lease_secs": 2},
        "auth": {"mode": "jwt"},
        "auth.jwt": {"secret": SECRET},
        "workers": {
            "heartbeat_secs": 0.5,
            "dead_after_secs": 3,
            "max_retries": 2,
            # A SIGKILLed worker's message comes back quickly on Redis too (else its
            # heartbeat timeout); postponed jobs are not re-sent by it (they are kept).
            "requeue_pending_after_secs": 4,
        },
        "jobs": {"modules": ["tests.limit_jobs"]},
        "job_types.rated_probe": {"rate": f"{RATE_COUNT}/second"},
        "quotas.types.owned_probe": {"max_running": 1},
    }
    if broker == "redis":
        sections["broker"].update(url=REDIS_URL, namespace=queue)
    elif broker == "rabbitmq":
        sections["broker"]["url"] = RABBITMQ_URL
    settings_path = write_settings(directory, sections)
    api, url = start_api(settings_path, directory)
    system = Limited(broker, url, directory / "runs.log", queue, settings_path, directory)
    try:
        yield system
    finally:
        for worker in system.workers:
            worker.stop()
        api.stop()
        os.environ.pop("SKILLQ_TEST_LIMITS_QUEUE", None)
        if broker == "rabbitmq":
            _cleanup_rabbitmq(queue)


def starts(record: Path, prefix: str) -> list[float]:
    return sorted(
        at for kind, tag, _, at in runs(record) if kind == "start" and tag.startswith(prefix)
    )


@pytest.mark.timeout(480)  # three worker processes boot, then ~50 jobs under limits
def test_limits_hold_across_three_workers_and_postponed_jobs_complete_once(
    limited: Limited,
) -> None:
    batch = []
    for i in range(RATED_JOBS):  # interleaved, so all three types share the queue's head
        if i < 12:
            batch.append(("limited_probe", f"lim-{i}", 0.4))
        batch.append(("rated_probe", f"rate-{i}", 0.05))
        if i % 2 == 0 and i < 20:
            batch.append(("free_probe", f"free-{i}", 0.05))
    # Queued before any worker runs, so they all compete for the slots at once.
    ids = limited.submit_all(batch)
    limited.start_workers()
    finished = limited.wait_finished(ids)

    assert [job["state"] for job in finished] == ["completed"] * len(ids)
    # Postponed, not retried: each job ran once, in its first attempt.
    assert {job["attempts"] for job in finished} == {1}
    ran = Counter(tag for kind, tag, _, _ in runs(limited.record) if kind == "start")
    assert set(ran.values()) == {1}, ran
    spans = [
        (at, end)
        for kind, tag, _, at in runs(limited.record)
        if kind == "start" and tag.startswith("lim-")
        for end_kind, end_tag, _, end in runs(limited.record)
        if end_kind == "end" and end_tag == tag
    ]
    assert len(spans) == 12
    assert max_overlap(spans) <= 2
    rated = starts(limited.record, "rate-")
    assert len(rated) == RATED_JOBS
    # At most RATE_COUNT starts in any second: the (n+RATE_COUNT)th is a second after the nth.
    gaps = [later - earlier for earlier, later in zip(rated, rated[RATE_COUNT:], strict=False)]
    assert min(gaps) >= 1.0 - RECORD_SLACK_SECS, gaps
    # The unlimited type did not wait for the rate-limited backlog to drain.
    assert max(starts(limited.record, "free-")) < rated[-1]

    stats = httpx.get(f"{limited.url}/api/v1/stats", headers=bearer("alice"), timeout=30).json()
    limits = stats["limits"]
    assert limits["limited_probe"]["max_concurrent"] == 2
    assert limits["rated_probe"]["rate"] == {"count": RATE_COUNT, "period_secs": 1.0}
    assert limits["limited_probe"]["postponed"] == 0
    assert limits["rated_probe"]["postponed_total"] > 0
    metrics = httpx.get(f"{limited.url}/metrics", timeout=30).text
    assert 'skillq_jobs_postponed_total{type="rated_probe"}' in metrics


def test_one_owners_backlog_does_not_hold_up_another_owners_job(limited: Limited) -> None:
    limited.start_workers()
    # One at a time, 0.3 s each: it drains slower than it is submitted, so most of it still
    # waits when bob's job comes. It is left to drain (or not) after the test.
    limited.submit_all([("fair_probe", f"bulk-{i}", 0.3) for i in range(40)])
    submitted = time.monotonic()
    single = limited.submit("fair_probe", "single", 0.05, owner="bob")
    (job,) = limited.wait_finished([single], owner="bob")
    assert job["state"] == "completed"
    (started,) = starts(limited.record, "single")
    overtaken = [at for at in starts(limited.record, "bulk-") if submitted < at < started]
    # Round-robin by owner: bob's job goes as soon as a slot frees after it was postponed,
    # whatever the length of alice's backlog (first come, first served, bob would wait for
    # most of the 40).
    assert len(overtaken) <= 3, len(overtaken)


def test_an_owners_max_running_holds_and_other_owners_run_beside(limited: Limited) -> None:
    limited.start_workers()
    alices = limited.submit_all([("owned_probe", f"own-a{i}", 0.4) for i in range(3)])
    bobs = limited.submit("owned_probe", "own-b", 0.3, owner="bob")
    finished = [*limited.wait_finished(alices), *limited.wait_finished([bobs], owner="bob")]
    assert [(job["state"], job["attempts"]) for job in finished] == [("completed", 1)] * 4
    spans = {
        tag: (at, end)
        for kind, tag, _, at in runs(limited.record)
        if kind == "start" and tag.startswith("own-")
        for end_kind, end_tag, _, end in runs(limited.record)
        if end_kind == "end" and end_tag == tag
    }
    assert max_overlap([span for tag, span in spans.items() if tag.startswith("own-a")]) == 1
    # bob's job did not queue behind alice's: it ran while hers still waited or ran.
    assert spans["own-b"][0] < max(end for tag, (_, end) in spans.items() if tag != "own-b")


def test_a_sigkilled_worker_does_not_keep_its_slot(limited: Limited) -> None:
    limited.start_workers()
    held = [limited.submit("limited_probe", f"hold-{i}", 4.0) for i in range(2)]

    def holders() -> dict[str, int]:
        found = {tag: pid for kind, tag, pid, _ in runs(limited.record) if kind == "start"}
        return {tag: pid for tag, pid in found.items() if tag.startswith("hold-")}

    running = wait_for(lambda: len(holders()) == 2 and holders(), timeout=60, what="both holds")
    victim_tag, victim_pid = sorted(running.items())[0]
    (survivor_tag,) = set(running) - {victim_tag}
    os.kill(victim_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    after = limited.submit("limited_probe", "after-kill", 0.05)
    limited.wait_finished([after, *held])
    # The dead worker's slot came back (its lease ran out) while the survivor still ran:
    # the next limited start came before the survivor's end.
    survivor_end = next(
        at for kind, tag, _, at in runs(limited.record) if kind == "end" and tag == survivor_tag
    )
    next_start = min(
        at
        for kind, tag, _, at in runs(limited.record)
        if kind == "start" and at > killed_at and tag in ("after-kill", victim_tag)
    )
    assert next_start < survivor_end
