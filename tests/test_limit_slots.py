"""The store side of job-type limits (`skillq.storage.job_limits`) on SQLite and PostgreSQL:
slots are exclusive under concurrent takers, leases expire, released slots stay released,
and postponed jobs come back highest priority first and round-robin by owner."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

from skillq.settings import StorageSettings
from skillq.storage import job_limits
from skillq.storage.database import connection
from skillq.storage.job_limits import CONCURRENCY, RATE, Hold, LimitSlot, lease_until
from skillq.storage.models import utcnow


def hold(owner: str = "alice") -> Hold:
    return Hold(uuid.uuid4().hex, owner, str(uuid.uuid4()))


def test_slots_are_exclusive_and_come_back_when_released_or_expired(
    store: StorageSettings,
) -> None:
    first, second, third = hold(), hold(), hold()
    assert job_limits.acquire("t", CONCURRENCY, 2, first, lease_until(30))
    assert job_limits.acquire("t", CONCURRENCY, 2, second, lease_until(30))
    assert not job_limits.acquire("t", CONCURRENCY, 2, third, lease_until(30))
    job_limits.release(first.holder)
    # A renewal racing the release does not bring the slot back.
    assert job_limits.renew([first.holder], lease_until(30)) == 0
    assert job_limits.acquire("t", CONCURRENCY, 2, third, lease_until(30))
    # A dead worker's lease runs out: its slot is free again.
    LimitSlot.update(expires_at=utcnow() - timedelta(seconds=1)).where(
        LimitSlot.holder == second.holder
    ).execute()
    assert not job_limits.extend(second.holder, CONCURRENCY, lease_until(30))
    assert job_limits.acquire("t", CONCURRENCY, 2, hold(), lease_until(30))
    assert job_limits.usage()["t"].running == 2


def test_a_rate_slot_is_held_for_its_window_and_never_released(store: StorageSettings) -> None:
    holds = [hold() for _ in range(3)]
    assert all(job_limits.acquire("r", RATE, 3, h, lease_until(60)) for h in holds)
    assert not job_limits.acquire("r", RATE, 3, hold(), lease_until(60))
    job_limits.release(holds[0].holder)  # releases concurrency slots only
    assert not job_limits.acquire("r", RATE, 3, hold(), lease_until(60))
    assert job_limits.next_expiry("r", RATE) is not None
    assert job_limits.usage()["r"].started_in_window == 3


def test_concurrent_takers_never_exceed_the_capacity(store: StorageSettings) -> None:
    capacity, inside, most, lock = 2, [0], [0], threading.Lock()

    def worker() -> None:
        with connection():
            for _ in range(15):
                mine = hold()
                if not job_limits.acquire("c", CONCURRENCY, capacity, mine, lease_until(30)):
                    continue
                with lock:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                with lock:
                    inside[0] -= 1
                job_limits.release(mine.holder)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 1 <= most[0] <= capacity


def test_postponed_jobs_come_back_by_priority_then_round_robin_by_owner(
    store: StorageSettings,
) -> None:
    for i in range(5):
        assert job_limits.postpone(f"a{i}", "t", "alice", 5, "{}")
    assert job_limits.postpone("b0", "t", "bob", 5, "{}")
    assert job_limits.postpone("low", "t", "carol", 2, "{}")
    assert not job_limits.postpone("a0", "t", "alice", 5, "{}")  # a duplicate delivery
    # alice's job holds the only slot: bob goes next, though alice's jobs came first.
    running = Hold("h1", "alice", "a-running")
    assert job_limits.acquire("t", CONCURRENCY, 1, running, lease_until(30))
    assert job_limits.next_postponed("t").job_id == "b0"
    # Released: alice was served more recently than bob (never), so bob still goes first.
    job_limits.release(running.holder)
    chosen = job_limits.next_postponed("t")
    assert chosen.job_id == "b0"
    assert job_limits.take(chosen)
    assert not job_limits.take(chosen)  # a second waker does not send it again
    assert job_limits.acquire("t", CONCURRENCY, 1, Hold("h2", "bob", "b0"), lease_until(30))
    order = []
    while (waiting := job_limits.next_postponed("t")) is not None:
        assert job_limits.take(waiting)
        order.append(waiting.job_id)
    assert order == ["a0", "a1", "a2", "a3", "a4", "low"]
    assert job_limits.usage(owner="alice") == {"t": job_limits.Usage(running=1)}
