"""The component schemas of the OpenAPI document: what each response body looks like.

Kept apart from `api.openapi` (which assembles operations) so each stays readable; they
must match what the handlers return, which the schemathesis tests check.
"""

from __future__ import annotations

from typing import Any

from skillq.storage.models import JobState

STATES = [state.value for state in JobState]
_DATETIME = {"type": ["string", "null"], "format": "date-time"}
_COUNTS = {
    "type": "object",
    "properties": {state: {"type": "integer", "minimum": 0} for state in STATES},
    "required": STATES,
    "additionalProperties": {"type": "integer", "minimum": 0},
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "details": {
                        "description": "For 400/422: a list of {path, message}; else null."
                    },
                },
                "required": ["code", "message", "details"],
            }
        },
        "required": ["error"],
    },
    "Job": {
        "type": "object",
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "type": {"type": "string"},
            "queue": {"type": "string"},
            "params": {"type": "object"},
            "state": {"type": "string", "enum": STATES},
            "priority": {"type": "integer", "minimum": 0, "maximum": 10},
            "progress": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "message": {"type": ["string", "null"]},
            "result": {"description": "The job's return value (any JSON) once completed."},
            "error": {
                "type": ["object", "null"],
                "properties": {"type": {"type": "string"}, "message": {"type": ["string", "null"]}},
                "required": ["type", "message"],
            },
            "attempts": {"type": "integer", "minimum": 0},
            "max_retries": {"type": "integer", "minimum": 0},
            "created_at": {"type": "string", "format": "date-time"},
            "started_at": _DATETIME,
            "completed_at": _DATETIME,
            "expires_at": {"type": "string", "format": "date-time"},
            "duration_ms": {"type": ["integer", "null"]},
            "position_in_queue": {
                "type": ["integer", "null"],
                "description": "Pending jobs of its queue ahead of it (single job only).",
            },
            "owner": {"type": "string"},
            "trace_id": {"type": ["string", "null"]},
            "idempotency_key": {"type": ["string", "null"]},
            "worker_id": {"type": ["string", "null"]},
            "heartbeat_at": _DATETIME,
            "cancel_requested_at": _DATETIME,
        },
        "required": ["id", "type", "queue", "params", "state", "priority", "attempts"],
    },
    "Progress": {
        "type": "object",
        "description": "A `progress` event of a job's stream: only these two changed.",
        "properties": {
            "progress": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "message": {"type": ["string", "null"]},
        },
        "required": ["progress", "message"],
    },
    "JobPage": {
        "type": "object",
        "properties": {
            "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
            "total": {"type": "integer", "minimum": 0},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
        },
        "required": ["jobs", "total", "limit", "offset"],
    },
    "Stats": {
        "type": "object",
        "properties": {
            "total": {"type": "integer", "minimum": 0},
            "by_state": _COUNTS,
            "by_type": {"type": "object", "additionalProperties": _COUNTS},
            "by_queue": {"type": "object", "additionalProperties": _COUNTS},
        },
        "required": ["total", "by_state", "by_type", "by_queue"],
    },
    "Principal": {
        "type": "object",
        "properties": {
            "subject": {"type": "string"},
            "roles": {"type": "array", "items": {"type": "string"}},
            "method": {"type": "string", "enum": ["none", "jwt", "oidc", "api_key"]},
            "admin": {"type": "boolean"},
            "can_submit": {"type": "boolean"},
        },
        "required": ["subject", "roles", "method", "admin", "can_submit"],
    },
    "Probe": {
        "type": "object",
        "properties": {"status": {"type": "string", "enum": ["ok", "unavailable"]}},
        "required": ["status"],
    },
    "Version": {
        "type": "object",
        "properties": {
            "version": {"type": "string"},
            "python": {"type": "string"},
            "dramatiq": {"type": "string"},
            "schema_version": {"type": ["integer", "null"]},
            "broker": {"type": "string"},
            "store": {"type": "string"},
            "auth": {"type": "string"},
        },
        "required": ["version", "schema_version", "broker", "store", "auth"],
    },
    "CollectionList": {
        "type": "object",
        "properties": {
            "collections": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "documents": {"type": "integer", "minimum": 0},
                    },
                    "required": ["name", "documents"],
                },
            }
        },
        "required": ["collections"],
    },
    "SearchResult": {
        "type": "object",
        "properties": {
            "collection": {"type": "string"},
            "query": {"type": "string"},
            "k": {"type": "integer"},
            "hits": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "score": {"type": "number"},
                        "text": {"type": "string"},
                        "metadata": {"type": "object"},
                        "bm25": {"type": ["number", "null"]},
                        "similarity": {"type": ["number", "null"]},
                    },
                    "required": ["id", "score", "text", "metadata"],
                },
            },
        },
        "required": ["collection", "query", "k", "hits"],
    },
    "Workers": {
        "type": "object",
        "properties": {
            "workers": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "host": {"type": "string"},
                        "pid": {"type": "integer"},
                        "status": {"type": "string", "enum": ["alive", "stopped", "dead"]},
                        "queues": {"type": "array", "items": {"type": "string"}},
                        "threads": {"type": "integer"},
                        "started_at": {"type": "string", "format": "date-time"},
                        "last_beat_at": _DATETIME,
                        "stopped_at": _DATETIME,
                        "jobs_running": {"type": "integer", "minimum": 0},
                        "running_jobs": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "Only for callers who see every owner's jobs.",
                        },
                    },
                    "required": ["id", "host", "pid", "status", "jobs_running"],
                },
            },
            "counts": {
                "type": "object",
                "properties": {
                    status: {"type": "integer", "minimum": 0}
                    for status in ("alive", "stopped", "dead")
                },
                "required": ["alive", "stopped", "dead"],
            },
            "dead_after_secs": {"type": "number"},
        },
        "required": ["workers", "counts", "dead_after_secs"],
    },
    "JobType": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "queue": {"type": "string"},
            "description": {"type": "string"},
            "params_schema": {"type": "object"},
            "time_limit_secs": {"type": ["number", "null"]},
            "max_retries": {"type": ["integer", "null"]},
        },
        "required": ["name", "queue", "description", "params_schema"],
    },
}
