"""Global concurrency and rate limits per job type, on every broker, held in the job store.

A job type limited by `[job_types.<name>] max_concurrent` / `rate` (or the actor options of
the same names) takes a slot in the store (`skillq.storage.job_limits`) before its attempt
starts. A message that finds no free slot is **postponed**, not failed: its job stays
`pending` with its attempt count, its message is kept in the store, and the message itself is
acknowledged, so it neither spins through the broker nor blocks the other types of its queue.

When a slot frees (a job of the type ends here, a rate window moves on, a dead worker's lease
runs out), a worker takes the next postponed job out (highest priority first, round-robin by
owner within it), reserves the slot for it and sends its message again carrying the
reservation, so the job it woke cannot lose the slot to a newcomer. While jobs of a type are
postponed, newcomers of that type queue up behind them.

Placed before `JobStatus`: a postponed message never marks its job running, and the slot is
given back only after `JobStatus` has recorded the outcome.

Parameters:
  configured(Mapping[str, Limit]): The limits from settings, by job type; they override the
    actor options.
  lease_secs(float): How long a concurrency slot outlives its worker's last renewal (the
    worker's `dead_after_secs`): the slot of a SIGKILLed worker frees after it.
  renew_secs(float): How often each worker renews its slots' leases and looks for slots that
    freed without telling anyone (its `heartbeat_secs`).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.errors import ActorNotFound
from dramatiq.message import generate_unique_id
from dramatiq.middleware import Middleware, SkipMessage

from skillq.brokers.job_status import JOB_ID_OPTION
from skillq.rates import Rate, parse_rate
from skillq.storage import job_limits, job_metrics, jobs
from skillq.storage.database import connection, database_proxy
from skillq.storage.job_limits import CONCURRENCY, RATE, Hold, lease_until
from skillq.storage.models import utcnow

logger = logging.getLogger(__name__)

#: Message option: the slot reservation a woken postponed job starts with.
TOKEN_OPTION = "job_limit_token"
#: Actor options declaring a job type's limits (overridden by `[job_types.<name>]`).
LIMIT_OPTIONS = frozenset({"max_concurrent", "rate"})
#: Message option marking the delivery this worker postponed (its log line is ours).
_POSTPONED_OPTION = "job_postponed"
#: Postponed jobs one wake-up sends at most, so one thread never loops for long.
_WAKE_BATCH = 64


class _PostponedSkipFilter(logging.Filter):
    """dramatiq warns of every skipped message; a postponement is routine (it has its own INFO
    line), so 1,000 postponed jobs must not mean 1,000 warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "was skipped" not in str(record.msg) or not record.args:
            return True
        message = record.args[0] if isinstance(record.args, tuple) else None
        return not getattr(message, "options", {}).get(_POSTPONED_OPTION)


@dataclass(frozen=True)
class Limit:
    """A job type's limits; None for no limit of that kind."""

    max_concurrent: int | None = None
    rate: Rate | None = None

    def __bool__(self) -> bool:
        return self.max_concurrent is not None or self.rate is not None

    def to_dict(self) -> dict[str, Any]:
        rate = self.rate
        per = None if rate is None else {"count": rate.count, "period_secs": rate.period_secs}
        return {"max_concurrent": self.max_concurrent, "rate": per}


def limit_from(max_concurrent: Any = None, rate: Any = None) -> Limit:
    """A Limit from setting or option values; ValueError names what is wrong."""
    if max_concurrent is not None and (type(max_concurrent) is not int or max_concurrent < 1):
        raise ValueError(f"max_concurrent must be a positive integer (got {max_concurrent!r})")
    if rate is not None and not isinstance(rate, str):
        raise ValueError(f"rate must be a string such as '10/minute' (got {rate!r})")
    return Limit(max_concurrent, None if rate is None else parse_rate(rate))


class JobLimits(Middleware):
    """Postpones a job whose type is at its global limit; see the module docstring."""

    def __init__(
        self,
        configured: Mapping[str, Limit] | None = None,
        *,
        lease_secs: float = 15.0,
        renew_secs: float = 2.0,
    ) -> None:
        self.configured = dict(configured or {})
        self.lease_secs = lease_secs
        self.renew_secs = renew_secs
        self._resolved: dict[str, Limit] = {}
        self._held: dict[int, str] = {}  # worker thread -> the token of the slots it holds
        self._lock = threading.Lock()
        self._waker: _Waker | None = None
        logging.getLogger("dramatiq.worker.WorkerThread").addFilter(_PostponedSkipFilter())

    @property
    def actor_options(self) -> set[str]:
        return set(LIMIT_OPTIONS)

    def after_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor) -> None:
        # A bad option is a programming error: fail where the actor is declared.
        limit_from(actor.options.get("max_concurrent"), actor.options.get("rate"))

    def limit_of(self, broker: dramatiq.Broker, actor_name: str) -> Limit:
        """The settings' limit of a type, else its actor options', else none."""
        limit = self._resolved.get(actor_name)
        if limit is None:
            try:
                options = broker.get_actor(actor_name).options
            except ActorNotFound:
                options = {}
            declared = limit_from(options.get("max_concurrent"), options.get("rate"))
            configured = self.configured.get(actor_name, Limit())
            limit = Limit(
                configured.max_concurrent or declared.max_concurrent,
                configured.rate or declared.rate,
            )
            self._resolved[actor_name] = limit
        return limit

    def limits(self, broker: dramatiq.Broker) -> dict[str, Limit]:
        """Every job type with a limit."""
        found = {name: self.limit_of(broker, name) for name in broker.actors}
        return {name: limit for name, limit in sorted(found.items()) if limit}

    # --- the worker side ---

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        limited = self.limits(broker)
        if limited:
            self._waker = _Waker(self, broker, list(limited))
            self._waker.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self._waker is not None:
            self._waker.stop()

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        job_id = message.options.get(JOB_ID_OPTION)
        if job_id is None:
            return
        limit = self.limit_of(broker, message.actor_name)
        if not limit:
            return
        database_proxy.connect(reuse_if_open=True)
        token = message.options.pop(TOKEN_OPTION, None)
        if token is not None and self._confirm(token, limit):
            self._hold(token)
            return
        job = jobs.get_job(job_id)
        if job is None or job.job_state.is_terminal:
            return  # `JobStatus` drops it
        hold = Hold(uuid.uuid4().hex, job.owner, job_id)
        job_type = message.actor_name
        if not job_limits.has_postponed(job_type) and self._acquire(job_type, limit, hold):
            self._hold(hold.holder)
            return
        kept = message.copy(message_id=generate_unique_id())
        if job_limits.postpone(job_id, job_type, job.owner, job.priority, kept.encode().decode()):
            job_metrics.count(job_type, "postponed")
            logger.info("Job %s postponed: %s is at its limit.", job_id, job_type)
        message.options[_POSTPONED_OPTION] = True
        # A slot may have freed between the look and the postponement: nobody would wake it.
        self.wake(broker, job_type)
        if self._waker is not None:
            self._waker.poke()
        raise SkipMessage()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.Message,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        with self._lock:
            token = self._held.pop(threading.get_ident(), None)
        if token is None:
            return
        with connection():
            job_limits.release(token)
            self.wake(broker, message.actor_name)

    after_skip_message = after_process_message

    def _hold(self, token: str) -> None:
        with self._lock:
            self._held[threading.get_ident()] = token

    def held_tokens(self) -> list[str]:
        with self._lock:
            return list(self._held.values())

    def _acquire(self, job_type: str, limit: Limit, hold: Hold, *, reserve: bool = False) -> bool:
        """Take a concurrency slot, then a rate slot; either both or neither. A job starting
        now holds its rate slot one period from now; a reservation (`reserve`) keeps it until
        its job starts (at least a lease), when `_confirm` moves the window to then."""
        n = limit.max_concurrent
        if n is not None and not job_limits.acquire(
            job_type, CONCURRENCY, n, hold, lease_until(self.lease_secs)
        ):
            return False
        rate = limit.rate
        if rate is not None:
            seconds = max(self.lease_secs, rate.period_secs) if reserve else rate.period_secs
            if not job_limits.acquire(job_type, RATE, rate.count, hold, lease_until(seconds)):
                job_limits.release(hold.holder)
                return False
        return True

    def _confirm(self, token: str, limit: Limit) -> bool:
        """Start on a reservation: the lease runs from now, the rate window starts now."""
        ok = limit.max_concurrent is None or job_limits.extend(
            token, CONCURRENCY, lease_until(self.lease_secs)
        )
        if ok and limit.rate is not None:
            ok = job_limits.extend(token, RATE, lease_until(limit.rate.period_secs))
        if not ok:
            job_limits.forget(token)
        return ok

    def wake(self, broker: dramatiq.Broker, job_type: str) -> int:
        """Send postponed jobs of `job_type` again, one per slot free now, each with its slot
        reserved; how many were sent."""
        limit = self.limit_of(broker, job_type)
        sent = 0
        while limit and sent < _WAKE_BATCH and job_limits.has_postponed(job_type):
            waiting = job_limits.next_postponed(job_type)
            if waiting is None:
                break
            hold = Hold(uuid.uuid4().hex, waiting.owner, waiting.job_id)
            if not self._acquire(job_type, limit, hold, reserve=True):
                break
            if not job_limits.take(waiting):
                job_limits.forget(hold.holder)  # another worker woke it
                continue
            message = dramatiq.Message.decode(waiting.message.encode())
            message.options[TOKEN_OPTION] = hold.holder
            try:
                broker.enqueue(message)
            except Exception:
                job_limits.forget(hold.holder)
                job_limits.put_back(waiting)
                logger.warning("Could not send postponed job %s; it waits.", waiting.job_id)
                break
            sent += 1
        return sent


class _Waker(threading.Thread):
    """Renews this worker's leases and wakes postponed jobs whose slot freed by itself (a rate
    window moved on, a dead worker's lease ran out). It sleeps until the next rate slot frees,
    at most `renew_secs`: its cost does not grow with the number of postponed jobs."""

    def __init__(self, limits: JobLimits, broker: dramatiq.Broker, job_types: list[str]) -> None:
        super().__init__(name="skillq-job-limits", daemon=True)
        self.limits = limits
        self.broker = broker
        self.job_types = job_types
        self._stop = threading.Event()
        self._poked = threading.Event()

    def poke(self) -> None:
        """A job was postponed: look again at when the next slot frees."""
        self._poked.set()

    def stop(self) -> None:
        self._stop.set()
        self._poked.set()

    def run(self) -> None:
        timeout = 0.0
        while not self._stop.is_set():
            self._poked.wait(timeout)
            self._poked.clear()
            if self._stop.is_set():
                return
            try:
                timeout = self._pass()
            except Exception:
                logger.warning("Job limits: the store did not answer; trying again.", exc_info=True)
                timeout = self.limits.renew_secs

    def _pass(self) -> float:
        limits = self.limits
        timeout = limits.renew_secs
        with connection():
            job_limits.renew(limits.held_tokens(), lease_until(limits.lease_secs))
            for job_type in self.job_types:
                limits.wake(self.broker, job_type)
                if limits.limit_of(self.broker, job_type).rate is None:
                    continue
                if not job_limits.has_postponed(job_type):
                    continue
                expiry = job_limits.next_expiry(job_type, RATE)
                if expiry is not None:
                    timeout = min(timeout, (expiry - utcnow()).total_seconds())
        return max(timeout, 0.01)


def limits_of(broker: dramatiq.Broker) -> dict[str, Limit]:
    """Every job type of `broker` with a limit (for stats and `workers status`)."""
    for middleware in broker.middleware:
        if isinstance(middleware, JobLimits):
            return middleware.limits(broker)
    return {}
