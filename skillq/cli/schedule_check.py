"""`[[schedules]]` checked against the job types by commands that never declare them.

A schedule is a settings entry, but whether its type exists and its params fit that type's
schema is known only once `skillq.actors` has declared the job types, and importing that
package configures a whole process: it builds the broker, binds the store and upgrades its
schema. The commands that import it (api, mcp, scheduler, jobs) refuse a bad schedule there;
the others (`skillq up` before it starts anything, `skillq db status`, ...) must not touch the
broker or the store just to check one, so a short-lived child declares the same actors on
dramatiq's StubBroker, with the same middleware, in place of the configured process, and
runs the same check (`skillq.jobs.schedules.check_schedules`). It costs about a second, and
only when schedules are configured.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types

from skillq.settings import ENV_VAR, Settings, load_settings, settings_error_exit

#: Subcommands that import `skillq.actors` in their own process, which checks schedules.
CHECKED_ON_IMPORT = frozenset({"api", "mcp", "scheduler", "jobs"})


def refuse_bad_schedules(settings: Settings) -> None:
    """Exit 2 with one line naming the entry when a schedule could never fire."""
    if not settings.schedules:
        return
    from skillq.cli.supervisor import python_command

    env = dict(os.environ)
    if settings.source is not None:
        env[ENV_VAR] = str(settings.source)
    result = subprocess.run(
        python_command("-m", "skillq.cli.schedule_check"),
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode == 0:
        return
    lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
    if result.returncode == 2:
        print(lines[-1], file=sys.stderr)
        raise SystemExit(2)
    problem = f"error: could not check [[schedules]] against the job types: {lines[-1]}"
    print(problem, file=sys.stderr)
    raise SystemExit(1)


def _declare_on_stub_broker() -> None:
    """The child: declare every job type and schedule without a broker or a store."""
    import dramatiq
    from dramatiq.brokers.stub import StubBroker

    from skillq.brokers.factory import job_middleware
    from skillq.jobs.types import JobTypeOptions

    settings = load_settings()
    # The same middleware as skillq.actors.process, job-type options included.
    broker = StubBroker(middleware=[*job_middleware(settings.workers), JobTypeOptions()])
    dramatiq.set_broker(broker)
    # `skillq.actors` takes its broker and settings from this module; importing the real one
    # would connect to both the broker and the store.
    process = types.ModuleType("skillq.actors.process")
    process.__dict__.update(broker=broker, settings=settings)
    sys.modules[process.__name__] = process
    import skillq.actors  # noqa: F401  (declares everything; exits 2 on a bad schedule)


if __name__ == "__main__":
    from skillq.settings import SettingsError

    try:
        _declare_on_stub_broker()
    except SettingsError as error:
        settings_error_exit(error)
