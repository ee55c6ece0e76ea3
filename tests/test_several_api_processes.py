"""Scale-out: two API processes, two local worker processes and one remote worker (it reaches
only an API, over HTTP, with a worker token), each as if on its own machine (its own
`data_dir`), the others sharing one broker (Redis or RabbitMQ) and one PostgreSQL store.

Whatever API process a client reaches, it sees the same jobs, the same job events, the same
search collections and the same idempotency keys, and every job of a mixed batch runs
exactly once.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.reliability import prepare_broker, settings_sections
from tests.support import (
    ROOT,
    ChildProcess,
    child_env,
    create_postgres_schema,
    drop_postgres_schema,
    postgres_schema_url,
    require_service,
    start_api,
    start_worker,
    stop_all,
    wait_for,
    write_settings,
)

TERMINAL = {"completed", "failed", "cancelled"}
#: What a local worker (`Job <id> completed (attempt 1).`) and a remote one (`Job <id>:
#: completed (attempt 1).`) log when a job of theirs completes.
COMPLETED_LINE = re.compile(r"Job ([0-9a-f-]{36}):? completed \(attempt (\d+)\)")
SKILL = {"skill": "text-stats", "tool": "word_count"}


@dataclass
class Cluster:
    apis: list[httpx.Client]
    workers: list[ChildProcess]
    processes: list[ChildProcess] = field(default_factory=list)

    def completions(self, workers: list[ChildProcess] | None = None) -> Counter[str]:
        """How many times each job completed, from the workers' own logs."""
        seen: Counter[str] = Counter()
        for worker in self.workers if workers is None else workers:
            text = worker.log_path.read_text(errors="replace")
            seen.update(job_id for job_id, _ in COMPLETED_LINE.findall(text))
        return seen

    def story(self, job_ids: list[str], finished: dict[str, dict]) -> str:
        """What the store and every worker's log say of these jobs, for a failure message."""
        logs = {w.name: w.log_path.read_text(errors="replace").splitlines() for w in self.workers}
        lines = []
        for job_id in job_ids:
            lines.append(json.dumps(finished[job_id]))
            for name, log in logs.items():
                lines += [f"  {name}: {line}" for line in log if job_id in line]
        return "\n".join(lines)


def start_remote_worker(server_settings: Path, base_url: str, directory: Path) -> ChildProcess:
    """A worker with nothing but the API's URL and a worker token: sleep and skill jobs
    (index jobs write collections into the store, which it cannot reach)."""
    command = ["auth", "worker-token", "create", "remote-1", "--queues", "default,skill"]
    minted = subprocess.run(
        [sys.executable, "-m", "skillq", *command],
        cwd=ROOT,
        env=child_env(server_settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert minted.returncode == 0, minted.stderr
    directory.mkdir()
    own = write_settings(directory, {"server": {"data_dir": str(directory / "data")}})
    args = ["-m", "skillq", "worker", "--remote", base_url, "--threads", "4"]
    remote = ChildProcess("remote", [*args, "--token", minted.stdout.strip()], own, directory)
    wait_for(
        lambda: remote.logged("is ready") or not remote.alive(),
        timeout=60,
        what="the remote worker to register",
    )
    assert remote.alive(), remote.log()
    return remote


def machine(base: Path, name: str, broker: str, store_url: str) -> Path:
    """One machine's settings file: shared services, a data folder of its own."""
    directory = base / name
    directory.mkdir()
    sections = settings_sections(broker, directory)
    sections["storage"] = {"backend": "postgres", "url": store_url}
    sections["workers"]["requeue_pending_after_secs"] = 300  # no second message for a slow job
    # No worker dies here. With the reliability tests' 3-second lease, a loaded 2-core CI
    # machine that stalls for seconds (CI saw all 8 submitting clients stop for 2 s) makes a
    # live worker look dead, and its job rightly runs again: a lease test, not this one.
    sections["workers"]["dead_after_secs"] = 30
    return write_settings(directory, sections)


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    broker = request.param
    require_service("postgres")
    prepare_broker(broker)
    base = tmp_path_factory.mktemp(f"scale-{broker}")
    schema = create_postgres_schema()
    store_url = postgres_schema_url(schema)
    # Settings are written once per machine: the Redis namespace in them is per file, so every
    # machine must read the same one.
    shared = machine(base, "shared", broker, store_url)
    settings = {name: base / name / "settings.toml" for name in ("api-a", "api-b", "w1", "w2")}
    for path in settings.values():
        path.parent.mkdir()
        text = shared.read_text().replace(str(base / "shared"), str(path.parent))
        path.write_text(text)
    processes: list[ChildProcess] = []
    clients: list[httpx.Client] = []
    try:
        for name in ("api-a", "api-b"):
            api, base_url = start_api(settings[name], settings[name].parent)
            processes.append(api)
            clients.append(httpx.Client(base_url=base_url, timeout=30))
        workers = [start_worker(settings[name], settings[name].parent) for name in ("w1", "w2")]
        processes.extend(workers)
        remote = start_remote_worker(settings["api-a"], str(clients[0].base_url), base / "remote")
        processes.append(remote)
        workers.append(remote)
        yield Cluster(clients, workers, processes)
    finally:
        for client in clients:
            client.close()
        stop_all(reversed(processes))  # workers first, so no API waits out a long-poll
        drop_postgres_schema(schema)


def submit(api: httpx.Client, body: dict) -> dict:
    response = api.post("/api/v1/jobs", json=body)
    assert response.status_code in (200, 202), response.text
    return response.json()


def wait_all_terminal(api: httpx.Client, ids: list[str], cluster: Cluster) -> dict[str, dict]:
    pending = list(ids)
    finished: dict[str, dict] = {}

    def done() -> bool:
        # In submission order, stopping at the first unfinished job: one request per job
        # in all, not one per job per look.
        while pending:
            job = api.get(f"/api/v1/jobs/{pending[0]}").json()
            if job["state"] not in TERMINAL:
                return False
            finished[pending.pop(0)] = job
        return True

    try:
        wait_for(done, timeout=240, what=f"{len(pending)} jobs to finish")
    except AssertionError:
        for worker in cluster.workers:
            print(worker.log())
        raise
    return finished


def mixed_batch(n: int) -> list[dict]:
    """Sleep, index and skill jobs, interleaved so every queue has work from the start."""
    bodies = []
    for i in range(n):
        if i % 10 == 0:
            docs = [{"id": f"doc{i}", "text": f"report number{i} on walrus colonies"}]
            params = {"collection": f"reports{i % 3}", "documents": docs}
            bodies.append({"type": "index_documents", "params": params})
        elif i % 10 == 5:
            text = " ".join(["word"] * (i % 7 + 1))
            bodies.append({"type": "execute_skill", "params": {**SKILL, "input": {"text": text}}})
        else:
            bodies.append({"type": "sleep", "params": {"seconds": 0, "steps": 1, "echo": i}})
    return bodies


@pytest.mark.timeout(480)  # 500 jobs through five processes; minutes on a busy 2-core machine
def test_mixed_batch_through_two_apis_runs_each_job_exactly_once(cluster: Cluster) -> None:
    bodies = mixed_batch(500)
    with ThreadPoolExecutor(8) as pool:
        jobs = list(pool.map(lambda ib: submit(cluster.apis[ib[0] % 2], ib[1]), enumerate(bodies)))
    ids = [job["id"] for job in jobs]
    assert len(set(ids)) == 500
    # Read back through the other API process than the one that took the job.
    finished = wait_all_terminal(cluster.apis[1], ids, cluster)
    states = Counter(job["state"] for job in finished.values())
    assert states == {"completed": 500}, [j for j in finished.values() if j["state"] != "completed"]
    rerun = [job_id for job_id in ids if finished[job_id]["attempts"] != 1]
    assert not rerun, cluster.story(rerun, finished)
    for i, job_id in enumerate(ids):
        if bodies[i]["type"] == "sleep":
            assert finished[job_id]["result"]["echo"] == i
    completions = cluster.completions()
    assert {job_id: completions[job_id] for job_id in ids} == dict.fromkeys(ids, 1)
    remote_share = cluster.completions(cluster.workers[2:])
    assert remote_share, "the remote worker took no job"
    assert all(bodies[ids.index(job_id)]["type"] != "index_documents" for job_id in remote_share)

    # Both API processes list and count the same jobs.
    listings = [
        api.get("/api/v1/jobs", params={"type": "index_documents", "limit": 100}).json()
        for api in cluster.apis
    ]
    assert [j["id"] for j in listings[0]["jobs"]] == [j["id"] for j in listings[1]["jobs"]]
    assert len(listings[0]["jobs"]) == 50

    # What the index workers wrote is searchable from both API processes, the same way.
    answers = [
        api.get("/api/v1/collections/reports1/search", params={"q": "number40", "k": 3}).json()
        for api in cluster.apis
    ]
    assert answers[0] == answers[1]
    assert answers[0]["hits"][0]["id"] == "doc40"


def test_one_idempotency_key_sent_to_both_apis_at_once_makes_one_job(cluster: Cluster) -> None:
    body = {"type": "sleep", "params": {"seconds": 0, "steps": 1}, "idempotency_key": "once-1"}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: submit(cluster.apis[i % 2], body), range(16)))
    job_ids = {job["id"] for job in answers}
    assert len(job_ids) == 1, job_ids
    (job_id,) = job_ids
    for api in cluster.apis:
        assert api.get(f"/api/v1/jobs/{job_id}").json()["idempotency_key"] == "once-1"
    wait_all_terminal(cluster.apis[0], [job_id], cluster)
    assert cluster.completions()[job_id] == 1


def test_events_of_a_job_taken_by_one_api_stream_from_the_other(cluster: Cluster) -> None:
    job = submit(cluster.apis[0], {"type": "sleep", "params": {"seconds": 0.6, "steps": 3}})
    events: list[tuple[str, dict]] = []
    with cluster.apis[1].stream("GET", f"/api/v1/jobs/{job['id']}/stream") as response:
        assert response.status_code == 200
        name = "message"
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((name, json.loads(line.split(":", 1)[1])))
    states = [data["state"] for name, data in events if name == "state"]
    assert states[-1] == "completed", events
    progress = [data["progress"] for name, data in events if name == "progress"]
    assert progress and progress[-1] == 1.0, events
