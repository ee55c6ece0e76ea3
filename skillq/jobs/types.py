"""The catalogue of job types, read from the actors declared on a broker.

A job type is a dramatiq actor declared with a `params_schema` option; the catalogue is what
the coordinator validates submissions against and what the API lists.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware
from jsonschema import Draft202012Validator

from skillq.jobs.quick_schemas import Check, quick_check

#: Actor options that make an actor a job type, read back by `job_types_of`; `requires`
#: names the capabilities (`["gpu"]`) a remote worker must declare to be handed the job.
JOB_TYPE_OPTIONS = frozenset(
    {"params_schema", "description", "params_check", "owner_param", "requires"}
)


class JobTypeOptions(Middleware):
    """Lets actors declare themselves job types (`params_schema=...`, `description=...`,
    `params_check=...`): Dramatiq refuses actor options no middleware declares, and this
    catalogue is what reads these. The limit options (`max_concurrent=2`, `rate="10/minute"`)
    are declared by `skillq.brokers.job_limits.JobLimits`, which applies them."""

    @property
    def actor_options(self) -> set[str]:
        return set(JOB_TYPE_OPTIONS)


@dataclass(frozen=True)
class JobType:
    name: str
    queue: str
    description: str
    params_schema: dict[str, Any]
    #: Per-type time limit in seconds, or None for `workers.job_timeout_secs`.
    time_limit_secs: float | None = None
    #: Per-type retry budget, or None for `workers.max_retries`.
    max_retries: int | None = None
    #: Optional `check(params)` run at submission after the schema, for what a schema cannot
    #: say (e.g. a skill tool's own input schema); raises InvalidParams.
    params_check: Callable[[dict[str, Any]], None] | None = None
    #: The param, if any, naming whose data the job acts on (e.g. `index_documents`'s
    #: `owner`): absent means the job's own owner, and only an admin may name another.
    owner_param: str | None = None

    @functools.cached_property
    def validator(self) -> Draft202012Validator:
        return Draft202012Validator(
            self.params_schema, format_checker=Draft202012Validator.FORMAT_CHECKER
        )

    @functools.cached_property
    def quick_check(self) -> Check:
        """A quick yes for valid params before `validator`'s full walk (`quick_schemas`)."""
        return quick_check(self.params_schema) or _never

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "queue": self.queue,
            "description": self.description,
            "params_schema": self.params_schema,
            "time_limit_secs": self.time_limit_secs,
            "max_retries": self.max_retries,
        }


def _never(params: Any) -> bool:
    return False


def job_types_of(broker: dramatiq.Broker) -> dict[str, JobType]:
    catalogue = {}
    for actor in broker.actors.values():
        schema = actor.options.get("params_schema")
        if schema is None:
            continue
        Draft202012Validator.check_schema(schema)
        time_limit_ms = actor.options.get("time_limit")
        catalogue[actor.actor_name] = JobType(
            name=actor.actor_name,
            queue=actor.queue_name,
            description=actor.options.get("description") or (actor.fn.__doc__ or "").strip(),
            params_schema=schema,
            time_limit_secs=None if time_limit_ms is None else time_limit_ms / 1000,
            max_retries=actor.options.get("max_retries"),
            params_check=actor.options.get("params_check"),
            owner_param=actor.options.get("owner_param"),
        )
    return dict(sorted(catalogue.items()))
