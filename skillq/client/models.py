"""What the client hands back: typed views of the API's JSON, checked against /openapi.json
by the client's tests (the `Job` fields are exactly the document's `Job` properties)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

#: Job states after which nothing more happens to a job (unless it is retried).
TERMINAL_STATES = frozenset({"completed", "failed", "cancelled"})


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True, slots=True)
class JobError:
    type: str
    message: str | None


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    type: str
    queue: str
    params: dict[str, Any]
    state: str
    priority: int
    progress: float | None
    message: str | None
    result: Any
    error: JobError | None
    attempts: int
    max_retries: int | None
    created_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    expires_at: datetime | None
    scheduled_for: datetime | None
    duration_ms: int | None
    position_in_queue: int | None
    owner: str | None
    trace_id: str | None
    idempotency_key: str | None
    worker_id: str | None
    heartbeat_at: datetime | None
    cancel_requested_at: datetime | None
    depends_on: list[dict[str, Any]] | None = None
    waiting_for: list[str] = field(default_factory=list)
    workflow_id: str | None = None
    #: The JSON as the server sent it (fields a newer server adds are kept here).
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        values: dict[str, Any] = {}
        for spec in fields(cls):
            if spec.name == "raw":
                continue
            value = data.get(spec.name)
            if spec.name.endswith("_at") or spec.name == "scheduled_for":
                value = _time(value)
            elif spec.name == "error" and value is not None:
                value = JobError(value["type"], value.get("message"))
            values[spec.name] = value
        return cls(**values, raw=data)


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One Server-Sent Event of a job's stream: a `state` event carries the whole job, a
    `progress` event only `progress` and `message`."""

    kind: str
    id: str | None
    data: dict[str, Any]

    @property
    def job(self) -> Job | None:
        return Job.from_json(self.data) if self.kind == "state" else None


@dataclass(frozen=True, slots=True)
class SearchHit:
    id: str
    score: float
    text: str
    metadata: dict[str, Any]
    bm25: float | None = None
    similarity: float | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SearchHit:
        names = {spec.name for spec in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
