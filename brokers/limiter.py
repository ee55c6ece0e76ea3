"""The start gate of limited jobs, shared by local workers (`skillq.brokers.job_limits`) and
remote HTTP workers' fetches (`skillq.jobs.remote_fetch`), so a job takes the same slots
whichever consumer gets its message.

A job may start when it takes every slot that applies to it, in the store
(`skillq.storage.job_limits`): its owner's running slot (`[quotas] max_running`, of every
type) and its owner's slot of its type (`[quotas.types.<name>] max_running`), then a
concurrency slot and a rate slot of its type (`[job_types.<name>] max_concurrent` / `rate`,
or the actor options). Either it takes them all, or none. A job that cannot is
**postponed**: its message is kept in the store, its job stays `pending` with its attempt
count, and it is sent again, its slots reserved, when one frees (`wake`). While jobs of a
type wait, newcomers of that type queue up behind them, except behind jobs whose owners are
at their own running limit (those wait for their owner, not for the type).

The end of an attempt hands its concurrency slot straight to the next postponed job, in the
transaction that frees it (`give_back`): the slot is never seen free in between, and the
woken job starts on it without reading its job again (`start_reserved`). A postponement
wakes anyone only when it sees a slot free after it was kept (`_all_busy`): a held slot's
holder looks at the postponed jobs when it ends. Only slots that free by themselves (a rate
window moving on, a dead holder's lease running out) wait for the periodic `wake_pass`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping

import dramatiq
import peewee
from dramatiq.errors import ActorNotFound
from dramatiq.message import generate_unique_id

from skillq.brokers.limit_rules import Limit, OwnerLimit, limit_from
from skillq.storage import Job, job_limits, job_metrics, postponed_jobs
from skillq.storage.database import database_proxy
from skillq.storage.job_limits import Hold, lease_until
from skillq.storage.limit_tables import ALL_TYPES, CONCURRENCY, RATE, PostponedJob
from skillq.storage.models import utcnow

logger = logging.getLogger(__name__)

#: Message option: the slot reservation a woken postponed job starts with.
TOKEN_OPTION = "job_limit_token"
#: Actor options declaring a job type's limits (overridden by `[job_types.<name>]`).
LIMIT_OPTIONS = frozenset({"max_concurrent", "rate"})
#: Postponed jobs one wake-up sends at most, so one thread never loops for long.
_WAKE_BATCH = 64
#: A concurrency slot whose lease runs out within this many seconds may be free by the time
#: anyone would wake a job for it: a job postponed then wakes the postponed jobs itself.
_BUSY_MARGIN_SECS = 1.0


class Postponed(Exception):
    """The job cannot start now: its message is kept, to be sent again when a slot frees."""


class Limiter:
    """Takes, reserves and gives back the slots of limited jobs; see the module docstring.

    Parameters:
      configured(Mapping[str, Limit]): The limits from settings, by job type; they override
        the actor options.
      owners(OwnerLimit): The per-owner running limits.
      lease_secs(float): How long a concurrency or owner slot outlives its holder's last
        renewal (`workers.dead_after_secs`).
      renew_secs(float): How often `wake_pass` should run (`workers.heartbeat_secs`).
    """

    def __init__(
        self,
        configured: Mapping[str, Limit] | None = None,
        owners: OwnerLimit | None = None,
        *,
        lease_secs: float = 15.0,
        renew_secs: float = 2.0,
    ) -> None:
        self.configured = dict(configured or {})
        self.owners = owners or OwnerLimit()
        self.lease_secs = lease_secs
        self.renew_secs = renew_secs
        self._resolved: dict[str, Limit] = {}

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
        """Every job type with a limit of its own."""
        found = {name: self.limit_of(broker, name) for name in broker.actors}
        return {name: limit for name, limit in sorted(found.items()) if limit}

    def applies(self, broker: dramatiq.Broker, job_type: str) -> bool:
        """Whether a job of `job_type` must take a slot to start."""
        caps = self.owners.caps(job_type)
        return bool(self.limit_of(broker, job_type)) or caps != (None, None)

    def admit(
        self, broker: dramatiq.Broker, message: dramatiq.Message, job: Job, holder: str = ""
    ) -> str | None:
        """Take `job`'s slots for this message (as `holder`, if given): the token holding
        them, or None when no limit applies. Raises `Postponed` when the job cannot start
        now: its message is then kept, and is sent again when a slot frees."""
        job_type = message.actor_name
        token = message.options.pop(TOKEN_OPTION, None)
        if not self.applies(broker, job_type):
            if token is not None:
                job_limits.forget(token)  # limits removed while it waited
            return None
        limit, caps = self.limit_of(broker, job_type), self.owners.caps(job_type)
        if token is not None and self._confirm(token, limit, caps):
            if holder:
                job_limits.rekey(token, holder)
                return holder
            return token
        if not self._queued_ahead(job_type, caps):
            hold = Hold(holder or uuid.uuid4().hex, job.owner, job.id)
            if self._acquire(job_type, limit, caps, hold):
                return hold.holder
        kept = message.copy(message_id=generate_unique_id()).encode().decode()
        # One transaction for the job and its count: one commit (and on SQLite one turn of
        # the write lock) per postponement, where a burst of queued jobs postpones dozens in a
        # row and the jobs woken meanwhile wait behind them in the broker's queue.
        with database_proxy.atomic():
            kept_now = postponed_jobs.postpone(job.id, job_type, job.owner, job.priority, kept)
            if kept_now:
                job_metrics.count(job_type, "postponed")
        if kept_now:
            logger.info("Job %s postponed: %s or its owner is at a limit.", job.id, job_type)
        # A slot may have freed between the look and the postponement: nobody would wake it.
        # Unless every concurrency slot of the type is held, read after the postponement:
        # each holder, when its attempt ends, frees its slot and then looks at the postponed
        # jobs (`give_back`), so it sees this one.
        if not self._all_busy(job_type, limit):
            self.wake(broker, job_type)
        raise Postponed()

    def start_reserved(self, broker: dramatiq.Broker, message: dramatiq.Message) -> str | None:
        """Start a woken job on the reservation its message carries, without reading the
        job: the token, now holding its slots, or None when `admit` must decide (no
        reservation, or one that ran out; or per-owner limits, whose wake-ups `give_back`
        does by the job's owner). Only for a consumer that gives the slots back however the
        message ends."""
        token = message.options.get(TOKEN_OPTION)
        if token is None or self.owners:
            return None
        limit = self.limit_of(broker, message.actor_name)
        if not (limit and (self._still_held(token, limit) or self._confirm(token, limit))):
            return None  # `admit` takes the token out of the message
        del message.options[TOKEN_OPTION]
        return token

    def _still_held(self, token: str, limit: Limit) -> bool:
        """Whether a reservation of a type with only a concurrency limit still holds its slot
        for long enough that it needs no write to start on: a read, where `_confirm` writes
        (and on SQLite waits for the write lock, held then by the outcome write of the job
        whose end woke this one). No one else takes a slot before its lease runs out; the
        lease then only has to last until the waker's first renewal (`renew_secs`) after the
        job joins the held ones. A rate slot's window must start now: `_confirm` moves it."""
        if limit.rate is not None or limit.max_concurrent is None:
            return False
        expires_at = job_limits.expiry(token, CONCURRENCY)
        if expires_at is None:
            return False
        margin = max(self.lease_secs / 2, 2 * self.renew_secs)
        return (expires_at - utcnow()).total_seconds() > margin

    def give_back(self, broker: dramatiq.Broker, token: str, job_type: str, owner: str) -> None:
        """An attempt ended: free its slots and wake the jobs they let start: its concurrency
        slot goes straight to the next postponed job of its type (`_hand_over`), and with
        per-owner limits its owner's waiting jobs of other types are woken."""
        if not self._hand_over(broker, token, job_type):
            self.wake(broker, job_type)
        if self.owners:
            for other in postponed_jobs.postponed_types(owner):
                if other != job_type:
                    self.wake(broker, other)

    def _hand_over(self, broker: dramatiq.Broker, token: str, job_type: str) -> bool:
        """Free `token`'s slots and, in the same transaction, give its concurrency slot to
        the next postponed job of the type (reserved, as `wake` would) and send that job;
        False when a `wake` must follow (the type has no concurrency limit, or another
        worker took the job first).

        One transaction and one write for the slot, where a release and a wake take several
        each committed apart: the gap between one job's end and the next one's start is most
        of what keeps a limited type below its limit. The release is seen by others before
        the look at the postponed jobs, so a job postponed meanwhile is either seen here or
        sees the slot free (`_all_busy`): on SQLite it is the transaction's first statement,
        which takes the one write lock; on PostgreSQL it commits before the transaction."""
        limit, caps = self.limit_of(broker, job_type), self.owners.caps(job_type)
        alone = job_limits.single_writer()
        if limit.max_concurrent is None or not alone:
            job_limits.release(token)
        if limit.max_concurrent is None:
            return False
        try:
            with database_proxy.atomic():
                if alone:
                    job_limits.release(token)
                waiting = postponed_jobs.next_postponed(job_type, *caps)
                if waiting is None:
                    return True
                hold = Hold(uuid.uuid4().hex, waiting.owner, waiting.job_id)
                if not self._acquire(job_type, limit, caps, hold, reserve=True, freed=token):
                    return True  # it waits for a slot that frees by itself: `wake_pass`
                if not postponed_jobs.take(waiting):
                    job_limits.forget(hold.holder)  # another worker woke it
                    return False
        except peewee.DatabaseError:
            # Rolled back (PostgreSQL chose it as a deadlock's victim): free the slots alone.
            logger.warning("Job limits: handing %s's slot over failed.", job_type, exc_info=True)
            job_limits.release(token)
            return False
        self._send(broker, waiting, hold.holder)
        return True

    def _all_busy(self, job_type: str, limit: Limit) -> bool:
        """Whether every concurrency slot of the type is held now (and not about to run out:
        a lease that does frees without anyone looking at the postponed jobs)."""
        n = limit.max_concurrent
        margin = min(_BUSY_MARGIN_SECS, self.lease_secs / 2)
        return n is not None and job_limits.all_busy(job_type, CONCURRENCY, n, margin)

    def _queued_ahead(self, job_type: str, caps: tuple[int | None, int | None]) -> bool:
        """Whether postponed jobs of the type come first: any, unless all their owners are
        at their running limit."""
        if not postponed_jobs.has_postponed(job_type):
            return False
        return caps == (None, None) or postponed_jobs.next_postponed(job_type, *caps) is not None

    def _acquire(
        self,
        job_type: str,
        limit: Limit,
        caps: tuple[int | None, int | None],
        hold: Hold,
        *,
        reserve: bool = False,
        freed: str | None = None,
    ) -> bool:
        """Take the owner's slots, a concurrency slot (the one `freed` released in this
        transaction, if it still has it), then a rate slot; either all or none. A job
        starting now holds its rate slot one period from now; a reservation (`reserve`)
        keeps it until its job starts (at least a lease), when `_confirm` moves the window
        to then. A refusal writes nothing unless a slot had been taken."""
        lease = lease_until(self.lease_secs)
        taken = False
        for scope, cap in zip((ALL_TYPES, job_type), caps, strict=True):
            if cap is not None:
                if not job_limits.acquire_owner(scope, cap, hold, lease):
                    return self._refused(hold, taken)
                taken = True
        n = limit.max_concurrent
        if n is not None:
            handed = freed is not None and job_limits.hand_over(freed, hold, lease)
            if not (handed or job_limits.acquire(job_type, CONCURRENCY, n, hold, lease)):
                return self._refused(hold, taken)
            taken = True
        rate = limit.rate
        if rate is not None:
            seconds = max(self.lease_secs, rate.period_secs) if reserve else rate.period_secs
            if not job_limits.acquire(job_type, RATE, rate.count, hold, lease_until(seconds)):
                return self._refused(hold, taken)
        return True

    @staticmethod
    def _refused(hold: Hold, taken: bool) -> bool:
        if taken:
            job_limits.release(hold.holder)
        return False

    def _confirm(
        self, token: str, limit: Limit, caps: tuple[int | None, int | None] = (None, None)
    ) -> bool:
        """Start on a reservation: the leases run from now, the rate window starts now."""
        lease = lease_until(self.lease_secs)
        ok = limit.max_concurrent is None or job_limits.extend(token, CONCURRENCY, lease)
        if ok and limit.rate is not None:
            ok = job_limits.extend(token, RATE, lease_until(limit.rate.period_secs))
        owned = sum(cap is not None for cap in caps)
        if ok and owned:
            ok = job_limits.extend_owner(token, lease) == owned
        if not ok:
            job_limits.forget(token)
        return ok

    def wake(self, broker: dramatiq.Broker, job_type: str) -> int:
        """Send postponed jobs of `job_type` again, one per slot free now, each with its
        slots reserved; how many were sent."""
        limit, caps = self.limit_of(broker, job_type), self.owners.caps(job_type)
        sent = 0
        while sent < _WAKE_BATCH and postponed_jobs.has_postponed(job_type):
            waiting = postponed_jobs.next_postponed(job_type, *caps)
            if waiting is None:
                break
            hold = Hold(uuid.uuid4().hex, waiting.owner, waiting.job_id)
            if not self._acquire(job_type, limit, caps, hold, reserve=True):
                break
            if not postponed_jobs.take(waiting):
                job_limits.forget(hold.holder)  # another worker woke it
                continue
            if not self._send(broker, waiting, hold.holder):
                break
            sent += 1
        return sent

    @staticmethod
    def _send(broker: dramatiq.Broker, waiting: PostponedJob, token: str) -> bool:
        """Send a postponed job taken out of the store, with its slots reserved as `token`;
        if it cannot be sent, it waits again and its reservation is freed."""
        message = dramatiq.Message.decode(waiting.message.encode())
        message.options[TOKEN_OPTION] = token
        try:
            broker.enqueue(message)
        except Exception:
            job_limits.forget(token)
            postponed_jobs.put_back(waiting)
            logger.warning("Could not send postponed job %s; it waits.", waiting.job_id)
            return False
        return True

    def wake_pass(self, broker: dramatiq.Broker, held: Iterable[str] = ()) -> float:
        """Renew the leases of `held` tokens and wake postponed jobs whose slot freed by
        itself (a rate window moved on, a dead holder's lease ran out); returns the seconds
        until the next pass is due (the next rate slot's expiry, at most `renew_secs`), so
        its cost does not grow with the number of postponed jobs. Call it in a connection."""
        timeout = self.renew_secs
        job_limits.renew(held, lease_until(self.lease_secs))
        job_types = set(self.limits(broker))
        if self.owners:
            job_types.update(postponed_jobs.postponed_types())
        for job_type in sorted(job_types):
            self.wake(broker, job_type)
            if self.limit_of(broker, job_type).rate is None:
                continue
            if not postponed_jobs.has_postponed(job_type):
                continue
            expiry = job_limits.next_expiry(job_type, RATE)
            if expiry is not None:
                timeout = min(timeout, (expiry - utcnow()).total_seconds())
        return max(timeout, 0.01)


def attempt_holder(job_id: str, attempt: int) -> str:
    """The token of a remote attempt's slots, known from its job and attempt alone: the
    server renews them with the worker's heartbeats and frees them when it reports."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"skillq-attempt:{job_id}:{attempt}").hex


def limiter_of(broker: dramatiq.Broker) -> Limiter | None:
    """The limiter of `broker`'s `JobLimits` middleware, if it has one."""
    for middleware in broker.middleware:
        limiter = getattr(middleware, "limiter", None)
        if isinstance(limiter, Limiter):
            return limiter
    return None
