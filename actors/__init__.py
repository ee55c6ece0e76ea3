"""Job types as dramatiq actors; importing this package configures the whole process.

`dramatiq skillq.actors` is the worker command on every broker: importing it configures the
process from its settings (`skillq.actors.process`) and then declares every job type on the
broker they name. The API process imports it too, so both sides always agree on the broker
and the job types.
"""

import importlib
import sys

if __name__ == "actors":
    # `dramatiq actors` from a checkout's root imports this folder under its bare name. Hand
    # over to the one real package, so the broker and the actors are declared once, as
    # `skillq.actors`: the import system returns what sits in sys.modules under our name.
    sys.modules[__name__] = importlib.import_module("skillq.actors")
else:
    from skillq.actors.process import broker, settings  # isort: split

    # Declared on the broker configured above, so they must be imported after it.
    from skillq.actors import diagnostics, examples, index, maintenance, skills, webhooks
    from skillq.jobs.plugins import PluginError, declare_plugins
    from skillq.jobs.schedules import declare_schedules
    from skillq.settings import SettingsError, settings_error_exit

    # Job types of installed plugins (entry points) and of `[jobs] modules`.
    try:
        plugins = declare_plugins(broker, settings.jobs.modules)
    except PluginError as error:
        print(f"plugin error: {error}", file=sys.stderr)
        raise SystemExit(2) from None

    # `[job_types.<name>]` must name a job type; plugins are declared only now.
    for name in settings.job_types:
        if name not in broker.actors:
            known = ", ".join(sorted(broker.actors))
            problem = f"unknown job type (known: {known})"
            settings_error_exit(SettingsError(problem, f"job_types.{name}", settings.source))

    # User schedules ([[schedules]]): one periodic actor each, run by `skillq scheduler`.
    try:
        schedule_actors = declare_schedules(broker, settings)
    except SettingsError as error:
        settings_error_exit(error)

__all__ = [
    "broker",
    "diagnostics",
    "examples",
    "index",
    "maintenance",
    "settings",
    "skills",
    "webhooks",
]
