"""The one job every system of the side-by-side suite runs, declared for each of them.

`bench/side_by_side.py` names the system in ``$BENCH_SYSTEM`` (and its broker in
``$BENCH_URL``, its queue in ``$BENCH_QUEUE``); this module then declares a job `probe(sent_at,
secs, record)` on it: the job appends ``s <seconds since sent_at>`` to the file `record` when
it starts, sleeps `secs`, and appends ``d <time>`` when it ends. The producer (the suite) and
the workers import this same module, so both sides agree on the broker.

Systems, configured as alike as they allow (one worker process, 8 threads, acks after the job,
no log line per job: skillq and Celery log warnings and errors only, Huey runs quiet):
  skillq-*        skillq's full path: `skillq.actors` (broker and store from $SKILLQ_SETTINGS,
                  all of skillq's middleware), submitted through the jobs coordinator; on
                  RabbitMQ with publisher confirms, as shipped, and without them
                  (skillq-rabbitmq-unconfirmed, `broker.confirm_delivery = false`);
  dramatiq-*      raw Dramatiq, default middleware, `actor.send()`: on skillq's SQLite broker
                  (no store), dramatiq's RedisBroker, dramatiq's RabbitmqBroker (no confirms);
  celery-*        Celery 5, threads pool, acks_late, prefetch multiplier 2 (Dramatiq's
                  prefetch is 2 x threads), results ignored;
  celery-*-results-pg  the same, keeping each task's state as skillq does, in the same
                  PostgreSQL (a schema of its own): Celery's database result backend with
                  `task_track_started`, so a task's row says STARTED, then SUCCESS. Celery
                  writes nothing at send (it has no stored PENDING), so it makes two writes
                  per task where skillq makes three. Its engine (connection pool) is kept
                  per thread, as each prefork child keeps one, not made per write (below);
  celery-*-results-redis  the same with the state in Redis, Celery's usual result store
                  (STARTED, then SUCCESS, each a SETEX and a PUBLISH; in memory, expiring
                  after a day: not a durable store like skillq's);
  huey-redis      Huey's RedisHuey with a blocking pop, thread workers, results off.
"""

from __future__ import annotations

import os
import time

SYSTEM = os.environ.get("BENCH_SYSTEM", "")
URL = os.environ.get("BENCH_URL", "")
QUEUE = os.environ.get("BENCH_QUEUE", "bench")


def _note(record: str, line: str) -> None:
    fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def probe_body(sent_at: float, secs: float, record: str) -> None:
    _note(record, f"s {time.time() - sent_at:.6f}")
    if secs:
        time.sleep(secs)
    _note(record, f"d {time.time():.6f}")


if SYSTEM.startswith("skillq-"):
    import dramatiq

    from skillq import actors  # noqa: F401  (configures skillq's broker and store)

    @dramatiq.actor(
        actor_name="bench_probe",
        queue_name="default",
        params_schema={
            "type": "object",
            "properties": {
                "sent_at": {"type": "number"},
                "secs": {"type": "number", "minimum": 0, "maximum": 60},
                "record": {"type": "string"},
            },
            "required": ["sent_at", "secs", "record"],
            "additionalProperties": False,
        },
        description="Side-by-side benchmark probe (bench/ only).",
    )
    def probe(sent_at: float, secs: float, record: str) -> None:
        probe_body(sent_at, secs, record)

elif SYSTEM.startswith("dramatiq-"):
    import dramatiq

    if SYSTEM == "dramatiq-sqlite":
        from skillq.brokers.sqlite import SQLiteBroker

        dramatiq.set_broker(SQLiteBroker(path=URL))
    elif SYSTEM == "dramatiq-redis":
        from dramatiq.brokers.redis import RedisBroker

        dramatiq.set_broker(RedisBroker(url=URL, namespace=QUEUE))
    else:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        dramatiq.set_broker(RabbitmqBroker(url=URL))

    @dramatiq.actor(actor_name="bench_probe", queue_name=QUEUE, max_retries=0)
    def probe(sent_at: float, secs: float, record: str) -> None:
        probe_body(sent_at, secs, record)

elif SYSTEM.startswith("celery-"):
    from celery import Celery

    app = Celery("bench", broker=URL)
    app.conf.update(
        task_default_queue=QUEUE,
        task_ignore_result=True,
        task_acks_late=True,
        worker_prefetch_multiplier=2,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    #: "pg" or "redis" for a Celery that keeps its tasks' state (``$BENCH_RESULTS_URL``).
    RESULTS = SYSTEM.partition("-results-")[2]
    if RESULTS:
        app.conf.update(
            result_backend=os.environ["BENCH_RESULTS_URL"],
            task_ignore_result=False,
            task_track_started=True,
        )
    if RESULTS == "redis":
        app.conf.result_backend_transport_options = {"global_keyprefix": f"{QUEUE}:"}
    if RESULTS == "pg":
        from celery.backends.database import session as celery_sessions

        plain_init = celery_sessions.SessionManager.__init__

        def reusing_engines(self: celery_sessions.SessionManager, *args, **kwargs) -> None:
            """Celery's session manager keeps its engine (a connection pool) only in a forked
            child; in a threads-pool worker it connects anew for every write (45.9 jobs/s,
            17.8 ms of worker CPU per job here). Each prefork child of a usual Celery
            deployment keeps its engine, so this one does too."""
            plain_init(self, *args, **kwargs)
            self.forked = True

        celery_sessions.SessionManager.__init__ = reusing_engines
        schema = os.environ["BENCH_RESULTS_SCHEMA"]
        app.conf.database_table_schemas = {"task": schema, "group": schema}

    @app.task(name="bench_probe")
    def probe(sent_at: float, secs: float, record: str) -> None:
        probe_body(sent_at, secs, record)

elif SYSTEM == "huey-redis":
    from huey import RedisHuey

    huey = RedisHuey(QUEUE, url=URL, results=False, blocking=True)

    @huey.task(name="bench_probe")
    def probe(sent_at: float, secs: float, record: str) -> None:
        probe_body(sent_at, secs, record)
