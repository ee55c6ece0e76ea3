"""The store side of job-type and per-owner limits (`skillq.storage.job_limits`) on SQLite
and PostgreSQL: slots are exclusive under concurrent takers, leases expire, released slots
stay released, postponed jobs come back highest priority first and round-robin by owner,
skipping owners at their running cap; and the start gate (`skillq.brokers.limiter`) over
them, in process."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import dramatiq
import pytest
from dramatiq import Message
from dramatiq.brokers.stub import StubBroker

from skillq.api.stats import job_stats
from skillq.brokers.factory import job_middleware
from skillq.brokers.job_status import JOB_ID_OPTION
from skillq.brokers.limit_rules import Limit, OwnerLimit
from skillq.brokers.limiter import TOKEN_OPTION, Postponed, limiter_of
from skillq.settings import StorageSettings, WorkerSettings
from skillq.storage import Job, job_limits, jobs, limit_usage, postponed_jobs
from skillq.storage.database import connection
from skillq.storage.job_limits import Hold, lease_until
from skillq.storage.limit_tables import ALL_TYPES, CONCURRENCY, RATE, LimitSlot, OwnerSlot
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
    assert limit_usage.usage()["t"].running == 2


def test_a_rate_slot_is_held_for_its_window_and_never_released(store: StorageSettings) -> None:
    holds = [hold() for _ in range(3)]
    assert all(job_limits.acquire("r", RATE, 3, h, lease_until(60)) for h in holds)
    assert not job_limits.acquire("r", RATE, 3, hold(), lease_until(60))
    job_limits.release(holds[0].holder)  # releases concurrency slots only
    assert not job_limits.acquire("r", RATE, 3, hold(), lease_until(60))
    assert job_limits.next_expiry("r", RATE) is not None
    assert limit_usage.usage()["r"].started_in_window == 3


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
        assert postponed_jobs.postpone(f"a{i}", "t", "alice", 5, "{}")
    assert postponed_jobs.postpone("b0", "t", "bob", 5, "{}")
    assert postponed_jobs.postpone("low", "t", "carol", 2, "{}")
    assert not postponed_jobs.postpone("a0", "t", "alice", 5, "{}")  # a duplicate delivery
    # alice's job holds the only slot: bob goes next, though alice's jobs came first.
    running = Hold("h1", "alice", "a-running")
    assert job_limits.acquire("t", CONCURRENCY, 1, running, lease_until(30))
    assert postponed_jobs.next_postponed("t").job_id == "b0"
    # Released: alice was served more recently than bob (never), so bob still goes first.
    job_limits.release(running.holder)
    chosen = postponed_jobs.next_postponed("t")
    assert chosen.job_id == "b0"
    assert postponed_jobs.take(chosen)
    assert not postponed_jobs.take(chosen)  # a second waker does not send it again
    assert job_limits.acquire("t", CONCURRENCY, 1, Hold("h2", "bob", "b0"), lease_until(30))
    order = []
    while (waiting := postponed_jobs.next_postponed("t")) is not None:
        assert postponed_jobs.take(waiting)
        order.append(waiting.job_id)
    assert order == ["a0", "a1", "a2", "a3", "a4", "low"]
    assert limit_usage.usage(owner="alice") == {"t": limit_usage.Usage(running=1)}


def test_owner_slots_cap_each_owner_and_a_capped_owner_is_skipped(store: StorageSettings) -> None:
    alice, bob = hold("alice"), hold("bob")
    assert job_limits.acquire_owner(ALL_TYPES, 1, alice, lease_until(30))
    assert not job_limits.acquire_owner(ALL_TYPES, 1, hold("alice"), lease_until(30))
    assert job_limits.acquire_owner(ALL_TYPES, 1, bob, lease_until(30))
    # A per-type cap is a group of its own: alice may run one "t" beside her other job.
    assert job_limits.acquire_owner("t", 1, hold("alice"), lease_until(30))
    assert postponed_jobs.postpone("a0", "t", "alice", 9, "{}")
    assert postponed_jobs.postpone("c0", "t", "carol", 1, "{}")
    # alice's job outranks carol's, but alice runs her one job: carol's goes next.
    assert postponed_jobs.next_postponed("t", 1, None).job_id == "c0"
    assert postponed_jobs.next_postponed("t").job_id == "a0"  # without the cap, priority wins
    assert limit_usage.owner_usage("alice") == {
        "alice": {"running": {ALL_TYPES: 1, "t": 1}, "postponed": 1}
    }
    job_limits.release(alice.holder)
    assert postponed_jobs.next_postponed("t", 1, None).job_id == "a0"
    assert postponed_jobs.next_postponed("t", 1, 1).job_id == "c0"  # her "t" slot is held
    assert postponed_jobs.postponed_types("alice") == ["t"]
    # A dead holder's owner slot frees itself once its lease runs out; renewals keep it.
    assert job_limits.renew([bob.holder], lease_until(30)) == 1
    OwnerSlot.update(expires_at=utcnow() - timedelta(seconds=1)).where(
        OwnerSlot.holder == bob.holder
    ).execute()
    assert job_limits.extend_owner(bob.holder, lease_until(30)) == 0
    assert job_limits.acquire_owner(ALL_TYPES, 1, hold("bob"), lease_until(30))


def _pending(broker: StubBroker, owner: str, actor: str = "plain") -> tuple[Message, Job]:
    job_id = str(uuid.uuid4())
    jobs.insert_job(
        id=job_id,
        type=actor,
        queue="default",
        params={},
        priority=5,
        max_retries=1,
        expires_at=utcnow() + timedelta(hours=1),
        owner=owner,
    )
    message = broker.get_actor(actor).message_with_options(**{JOB_ID_OPTION: job_id})
    return message, jobs.get_job(job_id)


def test_an_owner_at_max_running_waits_and_others_do_not(store: StorageSettings) -> None:
    """The start gate with `[quotas] max_running = 1` and `[quotas.types.capped]
    max_running = 1`: an owner's second job is postponed (not failed, attempts untouched)
    and is sent again, its slot reserved, when the first ends; another owner's job, or the
    same owner's job of another type under the per-type cap only, is not held up."""
    owners = OwnerLimit(max_running=2, types={"capped": 1})
    broker = StubBroker(middleware=job_middleware(WorkerSettings(), owners=owners))
    for name in ("plain", "capped"):
        dramatiq.actor(lambda: None, broker=broker, actor_name=name, queue_name="default")
    limiter = limiter_of(broker)
    assert limiter is not None and limiter.owners == owners
    with connection():
        first, second, third = (_pending(broker, "alice", "capped") for _ in range(3))
        token = limiter.admit(broker, *first)
        assert token is not None
        for waiting in (second, third):
            with pytest.raises(Postponed):
                limiter.admit(broker, *waiting)
        assert broker.queues["default"].qsize() == 0  # nothing to wake: alice is at her cap
        # Her plain job fits her overall cap of 2; bob's capped job is not behind hers.
        assert limiter.admit(broker, *_pending(broker, "alice")) is not None
        assert limiter.admit(broker, *_pending(broker, "bob", "capped")) is not None
        assert limit_usage.owner_usage("alice")["alice"] == {
            "running": {ALL_TYPES: 2, "capped": 1},
            "postponed": 2,
        }
        limiter.give_back(broker, token, "capped", "alice")
        # One slot freed: the older of her two waiting jobs is sent again, reserved.
        assert broker.queues["default"].qsize() == 1
        woken = Message.decode(broker.queues["default"].get())
        assert woken.options[JOB_ID_OPTION] == second[1].id
        reserved = woken.options[TOKEN_OPTION]
        assert limiter.admit(broker, woken, second[1]) == reserved
        assert limit_usage.owner_usage("alice")["alice"] == {
            "running": {ALL_TYPES: 2, "capped": 1},
            "postponed": 1,
        }
        # Postponed, not failed: still pending, no attempt counted.
        assert (jobs.get_job(second[1].id).state, jobs.get_job(second[1].id).attempts) == (
            "pending",
            0,
        )
    broker.close()


def test_stats_show_type_and_owner_limits_beside_their_use(store: StorageSettings) -> None:
    """The payload `GET /api/v1/stats`, `skillq workers status` and the dashboard's limits
    panel read."""
    running = Hold("h1", "alice", "j1")
    assert job_limits.acquire("t", CONCURRENCY, 2, running, lease_until(30))
    assert job_limits.acquire_owner(ALL_TYPES, 2, running, lease_until(30))
    assert job_limits.acquire_owner("t", 1, running, lease_until(30))
    assert postponed_jobs.postpone("j2", "t", "alice", 5, "{}")
    assert postponed_jobs.postpone("j3", "t", "bob", 5, "{}")
    limits, owners = {"t": Limit(max_concurrent=2)}, OwnerLimit(2, {"t": 1})
    stats = job_stats(None, limits, owners)
    assert stats["limits"]["t"] == {
        "max_concurrent": 2,
        "rate": None,
        "running": 1,
        "started_in_window": 0,
        "postponed": 2,
        "postponed_total": 0,
    }
    assert stats["owner_limits"] == {
        "max_running": 2,
        "types": {"t": 1},
        "owners": {
            "alice": {"running": 1, "running_by_type": {"t": 1}, "postponed": 1},
            "bob": {"running": 0, "running_by_type": {}, "postponed": 1},
        },
    }
    # A non-admin sees its own jobs only; without per-owner limits there is nothing to show.
    mine = job_stats("bob", limits, owners)
    assert list(mine["owner_limits"]["owners"]) == ["bob"] and mine["limits"]["t"]["postponed"] == 1
    assert job_stats(None, limits)["owner_limits"] == {}


def _capped_broker(max_concurrent: int) -> StubBroker:
    limits = {"capped": Limit(max_concurrent=max_concurrent)}
    broker = StubBroker(middleware=job_middleware(WorkerSettings(), limits=limits))
    dramatiq.actor(lambda: None, broker=broker, actor_name="capped", queue_name="default")
    return broker


def _slots(job_type: str) -> list[LimitSlot]:
    return list(LimitSlot.select().where(LimitSlot.job_type == job_type).order_by(LimitSlot.slot))


def test_a_freed_slot_goes_straight_to_the_next_waiting_job(store: StorageSettings) -> None:
    """An attempt's end hands its concurrency slot to the next postponed job (the same slot
    row, reserved for it) and sends that job; a newcomer meanwhile waits behind the rest."""
    broker = _capped_broker(1)
    limiter = limiter_of(broker)
    queue = broker.queues["default"]
    with connection():
        first, second, third = (_pending(broker, "alice", "capped") for _ in range(3))
        token = limiter.admit(broker, *first)
        for waiting in (second, third):
            with pytest.raises(Postponed):
                limiter.admit(broker, *waiting)
        assert queue.qsize() == 0  # the slot is held: nothing to wake
        (held,) = _slots("capped")
        limiter.give_back(broker, token, "capped", "alice")
        (handed,) = _slots("capped")
        assert (handed.slot, handed.job_id) == (held.slot, second[1].id)
        assert handed.holder != token and handed.expires_at > utcnow()
        assert queue.qsize() == 1
        woken = Message.decode(queue.get())
        assert woken.options[JOB_ID_OPTION] == second[1].id
        assert woken.options[TOKEN_OPTION] == handed.holder
        # A newcomer does not take the slot in between: it queues behind the third job.
        newcomer = _pending(broker, "alice", "capped")
        with pytest.raises(Postponed):
            limiter.admit(broker, *newcomer)
        assert queue.qsize() == 0
        # The woken job starts on its reservation, and the next end hands it on again.
        assert limiter.start_reserved(broker, woken) == handed.holder
        assert TOKEN_OPTION not in woken.options
        assert limit_usage.usage()["capped"] == limit_usage.Usage(running=1, postponed=2)
        limiter.give_back(broker, handed.holder, "capped", "alice")
        again = Message.decode(queue.get())
        assert again.options[JOB_ID_OPTION] == third[1].id
        assert [slot.job_id for slot in _slots("capped")] == [third[1].id]
        # Postponed, not failed: still pending, no attempt counted.
        assert {
            (jobs.get_job(j.id).state, jobs.get_job(j.id).attempts) for _, j in (third, newcomer)
        } == {("pending", 0)}
    broker.close()


@pytest.mark.parametrize("left_secs", [14.0, 1.0, -1.0])
def test_a_woken_job_starts_on_its_reservation_while_it_lasts(
    store: StorageSettings, left_secs: float
) -> None:
    """A reservation with most of its lease left is started on as it is (read, not written);
    one near its end is extended first; one that ran out is not started on (`admit` then
    takes a slot anew)."""
    broker = _capped_broker(1)  # a 15 s lease, renewed every 2 s
    limiter = limiter_of(broker)
    with connection():
        token = limiter.admit(broker, *_pending(broker, "alice", "capped"))
        with pytest.raises(Postponed):
            limiter.admit(broker, *_pending(broker, "alice", "capped"))
        limiter.give_back(broker, token, "capped", "alice")
        woken = Message.decode(broker.queues["default"].get())
        reserved = woken.options[TOKEN_OPTION]
        until = utcnow() + timedelta(seconds=left_secs)
        LimitSlot.update(expires_at=until).where(LimitSlot.holder == reserved).execute()
        started = limiter.start_reserved(broker, woken)
        slots = _slots("capped")
        if left_secs < 0:
            assert started is None and slots == []  # forgotten
        else:
            assert started == reserved and TOKEN_OPTION not in woken.options
            (slot,) = slots
            if left_secs > 7.5:
                assert slot.expires_at == until
            else:
                assert slot.expires_at > utcnow() + timedelta(seconds=10)
    broker.close()


def test_the_last_attempt_frees_its_slot_for_a_newcomer(store: StorageSettings) -> None:
    broker = _capped_broker(1)
    limiter = limiter_of(broker)
    with connection():
        token = limiter.admit(broker, *_pending(broker, "alice", "capped"))
        limiter.give_back(broker, token, "capped", "alice")
        assert broker.queues["default"].qsize() == 0
        assert "capped" not in limit_usage.usage()  # no slot in use, nothing waits
        assert limiter.admit(broker, *_pending(broker, "bob", "capped")) is not None
    broker.close()


@pytest.mark.parametrize("frees", ["before the postponement", "before the look"])
def test_a_slot_freed_while_a_job_is_postponed_still_starts_it(
    store: StorageSettings, monkeypatch: pytest.MonkeyPatch, frees: str
) -> None:
    """A postponement skips its wake-up when it sees every slot held afterwards; a slot that
    frees as it is postponed wakes it either way, and it is sent once."""
    broker = _capped_broker(1)
    limiter = limiter_of(broker)
    queue = broker.queues["default"]
    with connection():
        token = limiter.admit(broker, *_pending(broker, "alice", "capped"))
        late = _pending(broker, "bob", "capped")
        module, step = (
            (postponed_jobs, "postpone")
            if frees == "before the postponement"
            else (job_limits, "all_busy")
        )
        original = getattr(module, step)

        def holder_ends_first(*args: object) -> object:
            monkeypatch.setattr(module, step, original)
            limiter.give_back(broker, token, "capped", "alice")
            return original(*args)

        monkeypatch.setattr(module, step, holder_ends_first)
        with pytest.raises(Postponed):
            limiter.admit(broker, *late)
        assert queue.qsize() == 1
        woken = Message.decode(queue.get())
        assert woken.options[JOB_ID_OPTION] == late[1].id
        reserved = woken.options[TOKEN_OPTION]
        assert limiter.admit(broker, woken, late[1]) == reserved
        assert limit_usage.usage()["capped"] == limit_usage.Usage(running=1)
    broker.close()
