"""Behaviour of brokers.sqlite.SQLiteBroker, and the dramatiq-sqlite 0.1.0 defects it fixes.

Tests for a defect run against both brokers; the plain package's case is a strict xfail, so it
proves the defect exists and tells us when an upgrade fixes it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dramatiq
import dramatiq_sqlite
import pytest
from dramatiq.encoder import JSONEncoder, PickleEncoder
from dramatiq.errors import QueueJoinTimeout
from dramatiq.message import Message

from skillq.brokers.sqlite import SQLiteBroker

ROOT = Path(__file__).resolve().parents[2]
LEASE_SECS = 1.0


def ours(path: Path) -> dramatiq.Broker:
    return SQLiteBroker(path=path, lease_secs=LEASE_SECS)


def plain(path: Path) -> dramatiq.Broker:
    return dramatiq_sqlite.SQLiteBroker(url=str(path))


def both_brokers(defect: str) -> pytest.MarkDecorator:
    return pytest.mark.parametrize(
        "make_broker",
        [
            pytest.param(ours, id="ours"),
            pytest.param(plain, id="plain", marks=pytest.mark.xfail(strict=True, reason=defect)),
        ],
    )


def job(n: int, secs: float = 0.0, queue: str = "q", **options: object) -> Message:
    return Message(queue_name=queue, actor_name="job", args=(n, secs), kwargs={}, options=options)


def take(consumer: dramatiq.Consumer, count: int, within: float = 10.0) -> list:
    """Pull `count` messages, giving up at the deadline (then the caller's assert fails)."""
    got: list = []
    deadline = time.monotonic() + within
    while len(got) < count and time.monotonic() < deadline:
        message = next(consumer)
        if message is not None:
            got.append(message)
    return got


def wait_for(predicate: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@both_brokers("requeue() binds a tuple to `IN ?`: sqlite3.OperationalError")
def test_requeue_returns_messages_to_the_queue_and_frees_prefetch(make_broker, tmp_path):
    broker = make_broker(tmp_path / "q.db")
    for n in range(3):
        broker.enqueue(job(n))
    consumer = broker.consume("q", prefetch=3, timeout=100)
    first = take(consumer, 3)
    assert len(first) == 3

    consumer.requeue(first)

    # Only possible if the rows are queued again *and* the prefetch slots were freed.
    again = take(consumer, 3)
    assert sorted(m.args[0] for m in again) == [0, 1, 2]


@both_brokers("no ORDER BY and no priority: claim order is the table's")
def test_claim_order_is_priority_then_fifo(make_broker, tmp_path):
    broker = make_broker(tmp_path / "q.db")
    priorities = [None, 1, 9, None, 9, 0, 5, 1, 10]
    for n, priority in enumerate(priorities):
        options = {} if priority is None else {"broker_priority": priority}
        broker.enqueue(job(n, **options))
    effective = [5 if p is None else p for p in priorities]
    expected = sorted(range(len(priorities)), key=lambda n: (-effective[n], n))

    consumer = broker.consume("q", prefetch=1, timeout=100)
    order = []
    for _ in priorities:
        (message,) = take(consumer, 1)
        order.append(message.args[0])
        consumer.ack(message)

    assert order == expected


@both_brokers("a zero-backoff retry reuses the message id and the old attempt's ack eats it")
def test_retries_without_backoff_all_run(make_broker, tmp_path):
    broker = make_broker(tmp_path / "q.db")
    runs = []

    def flaky() -> None:
        runs.append(1)
        raise RuntimeError("try again")

    dramatiq.actor(
        flaky, broker=broker, queue_name="q", max_retries=3, min_backoff=0, max_backoff=0
    ).send()
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        assert wait_for(lambda: len(runs) >= 4, within=8.0), f"ran {len(runs)} times, not 4"
        broker.join("q", timeout=5000)
    finally:
        worker.stop()
    assert len(runs) == 4
    (dead,) = broker.dead_letters
    assert dead.options["retries"] == 4


@pytest.fixture
def pickle_encoder() -> Iterator[None]:
    dramatiq.set_encoder(PickleEncoder())
    yield
    dramatiq.set_encoder(JSONEncoder())


@both_brokers("enqueue JSON-decodes the encoder's output")
def test_any_dramatiq_encoder_round_trips(make_broker, tmp_path, pickle_encoder):
    broker = make_broker(tmp_path / "q.db")
    broker.enqueue(job(7, options_are="pickled"))
    (message,) = take(broker.consume("q", prefetch=1, timeout=100), 1)
    assert message.args == (7, 0.0)


def test_consumers_never_claim_the_same_row(tmp_path):
    broker = ours(tmp_path / "q.db")
    for n in range(10):
        broker.enqueue(job(n))
    first = take(broker.consume("q", prefetch=4, timeout=100), 4)
    second = take(broker.consume("q", prefetch=10, timeout=100), 6)
    third = broker.consume("q", prefetch=10, timeout=100)

    ids = [m.args[0] for m in first + second]
    assert sorted(ids) == list(range(10))
    assert next(third) is None  # every row is leased and the leases are live


def test_delayed_message_is_claimable_only_when_due(tmp_path):
    broker = ours(tmp_path / "q.db")
    broker.enqueue(job(1), delay=60_000)
    broker.enqueue(job(2), delay=50)
    consumer = broker.consume("q", prefetch=5, timeout=100)

    got = take(consumer, 2, within=2.0)

    assert [m.args[0] for m in got] == [2]
    assert "eta" not in got[0].options  # dramatiq would otherwise delay it a second time
    assert broker.get_declared_delay_queues() == set()


def test_next_returns_none_when_idle(tmp_path):
    # An idle consumer blocks for its whole timeout (the wake-ups of brokers/sqlite_wake.py),
    # so a short one: 30 s here once made this the file's slowest test.
    consumer = ours(tmp_path / "q.db").consume("q", prefetch=1, timeout=200)
    assert next(consumer) is None


def test_nacked_message_is_a_dead_letter_until_purged(tmp_path):
    broker = ours(tmp_path / "q.db")
    broker.enqueue(job(1))
    consumer = broker.consume("q", prefetch=1, timeout=100)
    (message,) = take(consumer, 1)
    message.options["why"] = "rejected"
    consumer.nack(message)

    broker.join("q", timeout=1000)  # a dead letter is not pending work
    (dead,) = broker.dead_letters
    assert (dead.message_id, dead.options["why"]) == (message.message_id, "rejected")
    assert broker.purge_dead_letters(older_than_secs=3600) == 0
    time.sleep(0.01)
    assert broker.purge_dead_letters(older_than_secs=0) == 1
    assert broker.dead_letters == []


def test_ack_deletes_only_the_claimed_row(tmp_path):
    broker = ours(tmp_path / "q.db")
    original = job(1)
    broker.enqueue(original)
    consumer = broker.consume("q", prefetch=2, timeout=100)
    (claimed,) = take(consumer, 1)
    broker.enqueue(original)  # same message id, e.g. a retry

    consumer.ack(claimed)

    (retry,) = take(consumer, 1)
    assert retry.message_id == original.message_id


def test_join_and_flush(tmp_path):
    broker = ours(tmp_path / "q.db")
    broker.enqueue(job(1))
    broker.enqueue(job(2, queue="other"))
    with pytest.raises(QueueJoinTimeout):
        broker.join("q", timeout=50)

    broker.flush("q")
    broker.join("q", timeout=1000)
    with pytest.raises(QueueJoinTimeout):
        broker.join("other", timeout=50)

    broker.flush_all()
    broker.join("other", timeout=1000)


# --- real worker processes --------------------------------------------------------------------

WORKER_SCRIPT = """
import os, signal, sys, threading, time
import dramatiq

kind, db, record, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if kind == "ours":
    from skillq.brokers.sqlite import SQLiteBroker
    broker = SQLiteBroker(path=db, lease_secs={lease})
else:
    import dramatiq_sqlite
    broker = dramatiq_sqlite.SQLiteBroker(url=db)

def note(event, n):
    fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{{event}} {{n}} {{os.getpid()}}\\n".encode())
    os.close(fd)

def job(n, secs):
    note("start", n)
    time.sleep(secs)
    note("done", n)

dramatiq.actor(job, broker=broker, queue_name="q", max_retries=0)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
worker.start()
note("ready", 0)
stop.wait()
worker.stop(timeout=10_000)
"""


class Workers:
    """Worker subprocesses that append `event n pid` lines to one record file."""

    def __init__(self, tmp_path: Path, kind: str) -> None:
        self.kind, self.db, self.record = kind, tmp_path / "q.db", tmp_path / "record.txt"
        self.script = tmp_path / "worker.py"
        self.script.write_text(textwrap.dedent(WORKER_SCRIPT.format(lease=LEASE_SECS)))
        self.log = tmp_path / "workers.log"
        self.procs: list[subprocess.Popen] = []

    def start(self, count: int, threads: int = 1) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        args = [self.kind, str(self.db), str(self.record), str(threads)]
        with self.log.open("a") as log:
            for _ in range(count):
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, str(self.script), *args], env=env, stdout=log, stderr=log
                    )
                )
        # Generous: under a loaded CI machine two interpreters can take long to come up.
        ready = wait_for(lambda: len(self.events("ready")) >= len(self.procs), within=60.0)
        assert ready, f"workers not ready; their output:\n{self.log.read_text()}"

    def events(self, event: str) -> list[tuple[int, int]]:
        if not self.record.exists():
            return []
        lines = [line.split() for line in self.record.read_text().splitlines()]
        return [(int(n), int(pid)) for name, n, pid in lines if name == event]

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def workers(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Workers]:
    kind = "ours" if request.node.callspec.params.get("make_broker", ours) is ours else "plain"
    pool = Workers(tmp_path, kind)
    yield pool
    pool.kill_all()


@both_brokers("no lease: a SIGKILLed worker's job stays 'consumed' forever")
def test_job_of_a_sigkilled_worker_runs_again(make_broker, workers, tmp_path):
    workers.start(2)
    make_broker(workers.db).enqueue(job(0, secs=2.5))
    assert wait_for(lambda: workers.events("start"), within=10.0)
    ((_, victim),) = workers.events("start")

    # Longer than the lease: the live owner's renewals keep the other worker off the job.
    time.sleep(2 * LEASE_SECS)
    assert len(workers.events("start")) == 1
    os.kill(victim, signal.SIGKILL)

    assert wait_for(lambda: workers.events("done"), within=12.0), "job never ran again"
    starts, done = workers.events("start"), workers.events("done")
    assert len(starts) == 2 and starts[1][1] != victim
    assert done == [(0, starts[1][1])]


@pytest.mark.parametrize("make_broker", [ours])
def test_two_worker_processes_share_a_queue_without_duplicates(make_broker, workers):
    workers.start(2, threads=2)
    broker = make_broker(workers.db)
    for n in range(30):
        broker.enqueue(job(n, secs=0.05))

    assert wait_for(lambda: len(workers.events("done")) >= 30, within=30.0)
    starts = workers.events("start")
    assert sorted(n for n, _ in starts) == list(range(30))  # each job ran exactly once
    assert len({pid for _, pid in starts}) == 2
