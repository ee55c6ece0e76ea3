"""Dramatiq's test helpers on our brokers, as `StubBroker` has them: `join` and `dead_letters`.

Dramatiq's own broker-generic tests rely on them (tests/dramatiq_suite runs those); these
pin down what they do on a real queue, where dead letters outlive the process.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import dramatiq
import pytest
from dramatiq.errors import QueueJoinTimeout

from skillq.brokers.failures import RecentFailures
from skillq.brokers.redis_priority import PriorityRedisBroker
from skillq.brokers.sqlite import SQLiteBroker
from tests.support import redis_url, require_service

REDIS_URL = redis_url(9)

MakeBroker = Callable[..., dramatiq.Broker]


class Boom(RuntimeError):
    pass


@pytest.fixture(params=["sqlite", "redis"])
def make_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeBroker]:
    """Brokers on one database (SQLite file, Redis namespace): like several processes."""
    made: list[dramatiq.Broker] = []
    namespace = f"skillq-test-{uuid.uuid4().hex[:8]}"
    if request.param == "redis":
        require_service("redis")

    def make(**kwargs: object) -> dramatiq.Broker:
        if request.param == "sqlite":
            broker = SQLiteBroker(path=tmp_path / "broker.db", **kwargs)
        else:
            broker = PriorityRedisBroker(url=REDIS_URL, namespace=namespace, **kwargs)
        made.append(broker)
        return broker

    yield make
    if request.param == "redis":
        client = made[0].client
        keys = list(client.scan_iter(f"{namespace}:*"))
        if keys:
            client.delete(*keys)
    for broker in made:
        broker.close()


def run_failing_job(broker: dramatiq.Broker, **options: object) -> dramatiq.Message:
    @dramatiq.actor(broker=broker, queue_name="q", actor_name="explode", max_retries=0)
    def explode() -> None:
        raise Boom("the job's own exception")

    sent = explode.send_with_options(**options)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        broker.join("q", timeout=20_000, fail_fast=False)
    finally:
        worker.stop()
    return sent


def test_join_with_fail_fast_reraises_the_dead_letters_exception(make_broker: MakeBroker) -> None:
    broker = make_broker()
    run_failing_job(broker, broker_priority=8)

    with pytest.raises(Boom, match="the job's own exception"):
        broker.join("q", fail_fast=True)
    broker.join("q")  # fail_fast_default is False on a real queue


def test_fail_fast_default_is_a_constructor_argument(make_broker: MakeBroker) -> None:
    broker = make_broker(fail_fast_default=True)
    run_failing_job(broker)

    with pytest.raises(Boom):
        broker.join("q")
    broker.join("q", fail_fast=False)


def test_a_dead_letter_of_another_process_fails_join_without_its_exception(
    make_broker: MakeBroker,
) -> None:
    sent = run_failing_job(make_broker())
    other = make_broker()  # never saw the exception: only the stored message

    with pytest.raises(Exception, match=sent.message_id) as raised:
        other.join("q", fail_fast=True)
    assert type(raised.value) is Exception


def test_dead_letters_is_a_list_of_the_messages_as_sent(make_broker: MakeBroker) -> None:
    broker = make_broker()
    assert broker.dead_letters == []
    sent = run_failing_job(broker, broker_priority=3)
    other = make_broker()
    other.declare_queue("q")

    (dead,) = other.dead_letters
    assert dead.message_id == sent.message_id
    # What the sender asked for; nothing of the broker's bookkeeping (Redis ids and levels).
    assert dead.options["broker_priority"] == 3
    assert not {"redis_message_id", "redis_level"} & set(dead.options)

    broker.flush_all()
    assert broker.dead_letters == []


def test_join_times_out_while_a_delayed_message_waits(make_broker: MakeBroker) -> None:
    broker = make_broker()

    @dramatiq.actor(broker=broker, queue_name="q", actor_name="later")
    def later() -> None:
        pass

    later.send_with_options(delay=60_000, broker_priority=8)
    with pytest.raises(QueueJoinTimeout):
        broker.join("q", timeout=300)


class NeedsAKeyword(Exception):
    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.code = code


def test_remembered_failures_are_bounded_and_rebuilt_without_the_original() -> None:
    failures = RecentFailures(size=2)
    original = Boom("first")
    failures.remember("a", original)
    failures.remember("b", NeedsAKeyword("second", code=7))
    failures.remember("none", None)  # a nack without an exception (e.g. a skipped message)

    rebuilt = failures.get("a")
    assert type(rebuilt) is Boom and rebuilt.args == ("first",) and rebuilt is not original
    # Cannot be built from its args: a plain Exception that still says what it was.
    assert str(failures.get("b")) == "NeedsAKeyword('second',)"
    assert failures.get("none") is None

    failures.remember("c", Boom("third"))
    assert failures.get("a") is None  # the oldest went
    assert failures.get("c").args == ("third",)
