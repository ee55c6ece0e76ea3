"""The component schemas of the OpenAPI document: what each response body looks like.

Kept apart from `api.openapi` (which assembles operations) so each stays readable; they
must match what the handlers return, which the schemathesis tests check.
"""

from __future__ import annotations

from typing import Any

from skillq.jobs.fields import JOB_SCHEMA, JOB_SUMMARY_SCHEMA, STATES
from skillq.jobs.logs import LOG_LINE_SCHEMA, LOG_PAGE_SCHEMA
from skillq.webhooks.listing import DELIVERIES_SCHEMA

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
                        "description": "For 400/422: a list of {path, message}; for 429 "
                        "rate_limited: [{path, message, quota, limit, current, "
                        "retry_after_secs}]; else null."
                    },
                },
                "required": ["code", "message", "details"],
            }
        },
        "required": ["error"],
    },
    "Job": JOB_SCHEMA,
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
            "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/JobSummary"}},
            "total": {"type": "integer", "minimum": 0},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
        },
        "required": ["jobs", "total", "limit", "offset"],
    },
    "LogLine": LOG_LINE_SCHEMA,
    "LogPage": {
        **LOG_PAGE_SCHEMA,
        "properties": {
            **LOG_PAGE_SCHEMA["properties"],
            "lines": {
                **LOG_PAGE_SCHEMA["properties"]["lines"],
                "items": {"$ref": "#/components/schemas/LogLine"},
            },
        },
    },
    "Stats": {
        "type": "object",
        "properties": {
            "total": {"type": "integer", "minimum": 0},
            "by_state": _COUNTS,
            "by_type": {"type": "object", "additionalProperties": _COUNTS},
            "by_queue": {"type": "object", "additionalProperties": _COUNTS},
            "limits": {
                "type": "object",
                "description": "Per job type with a global limit.",
                "additionalProperties": {"$ref": "#/components/schemas/TypeLimits"},
            },
            "owner_limits": {"$ref": "#/components/schemas/OwnerLimits"},
            "oldest_pending": {
                "type": "object",
                "description": "Per queue with pending jobs: the oldest one's creation time "
                "and age in seconds.",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        "created_at": {"type": "string", "format": "date-time"},
                        "age_secs": {"type": "number"},
                    },
                    "required": ["created_at", "age_secs"],
                },
            },
        },
        "required": [
            "total",
            "by_state",
            "by_type",
            "by_queue",
            "oldest_pending",
            "limits",
            "owner_limits",
        ],
    },
    "OwnerLimits": {
        "type": "object",
        "description": "The per-owner running limits (`[quotas] max_running`) and their use "
        "now; empty when none is set. An owner is listed while it runs or waits (a "
        "non-admin sees only itself).",
        "properties": {
            "max_running": {"type": ["integer", "null"], "minimum": 1},
            "types": {
                "type": "object",
                "description": "Per job type with its own per-owner cap.",
                "additionalProperties": {"type": "integer", "minimum": 1},
            },
            "owners": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        "running": {
                            "type": "integer",
                            "minimum": 0,
                            "description": "Jobs holding a slot of max_running.",
                        },
                        "running_by_type": {
                            "type": "object",
                            "additionalProperties": {"type": "integer", "minimum": 0},
                        },
                        "postponed": {
                            "type": "integer",
                            "minimum": 0,
                            "description": "Jobs waiting for any slot (owner or type).",
                        },
                    },
                    "required": ["running", "running_by_type", "postponed"],
                },
            },
        },
    },
    "TypeLimits": {
        "type": "object",
        "description": "A job type's global limits (null: none of that kind) and their use "
        "now, across all workers.",
        "properties": {
            "max_concurrent": {"type": ["integer", "null"], "minimum": 1},
            "rate": {
                "type": ["object", "null"],
                "properties": {
                    "count": {"type": "integer", "minimum": 1},
                    "period_secs": {"type": "number", "exclusiveMinimum": 0},
                },
                "required": ["count", "period_secs"],
            },
            "running": {"type": "integer", "minimum": 0, "description": "Slots in use."},
            "started_in_window": {
                "type": "integer",
                "minimum": 0,
                "description": "Starts in the current rate window.",
            },
            "postponed": {
                "type": "integer",
                "minimum": 0,
                "description": "Jobs waiting for a slot now (the caller's own, for a non-admin).",
            },
            "postponed_total": {
                "type": "integer",
                "minimum": 0,
                "description": "Postponements so far (all owners).",
            },
        },
        "required": [
            "max_concurrent",
            "rate",
            "running",
            "started_in_window",
            "postponed",
            "postponed_total",
        ],
    },
    "StatsHistory": {
        "type": "object",
        "properties": {
            "minutes": {"type": "integer", "minimum": 1},
            "buckets": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "start": {"type": "string", "format": "date-time"},
                        "completed": {"type": "integer", "minimum": 0},
                        "failed": {"type": "integer", "minimum": 0},
                        "pending": {"type": "integer", "minimum": 0},
                    },
                    "required": ["start", "completed", "failed", "pending"],
                },
            },
        },
        "required": ["minutes", "buckets"],
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
    "ProtectedResourceMetadata": {
        "type": "object",
        "description": "OAuth 2.0 Protected Resource Metadata (RFC 9728).",
        "properties": {
            "resource": {"type": "string", "format": "uri"},
            "resource_name": {"type": "string"},
            "authorization_servers": {
                "type": "array",
                "description": "auth.mode oidc only: the provider's issuer.",
                "items": {"type": "string", "format": "uri"},
            },
            "scopes_supported": {
                "type": "array",
                "items": {"enum": ["skillq:read", "skillq:submit", "skillq:admin"]},
            },
            "bearer_methods_supported": {"type": "array", "items": {"const": "header"}},
        },
        "required": ["resource", "scopes_supported", "bearer_methods_supported"],
    },
    "Probe": {
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "sandbox": {
                "type": "object",
                "description": "/health only: the sandbox skill tools get on this machine",
                "properties": {
                    "setting": {"type": "string", "enum": ["auto", "bwrap", "process"]},
                    "mode": {"type": "string", "enum": ["bwrap", "process"]},
                    "bwrap": {"type": "boolean", "description": "bwrap works here"},
                    "usable": {"type": "boolean", "description": "false: tools refuse to run"},
                    "problem": {"type": ["string", "null"]},
                },
                "required": ["setting", "mode", "bwrap", "usable", "problem"],
            },
        },
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
                        "owner": {"type": "string"},
                        "name": {"type": "string"},
                        "documents": {"type": "integer", "minimum": 0},
                    },
                    "required": ["owner", "name", "documents"],
                },
            }
        },
        "required": ["collections"],
    },
    "SearchResult": {
        "type": "object",
        "properties": {
            "owner": {"type": "string"},
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
        "required": ["owner", "collection", "query", "k", "hits"],
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
    "Pools": {
        "type": "object",
        "properties": {
            "pools": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "queue": {"type": "string"},
                        "desired_threads": {"type": "integer", "minimum": 0},
                        "desired_processes": {"type": "integer", "minimum": 0},
                        "source": {"type": "string", "enum": ["settings", "scaled"]},
                        "actual_threads": {
                            "type": "array",
                            "items": {"type": "integer"},
                            "description": "Threads of each live process serving the queue.",
                        },
                    },
                    "required": [
                        "queue",
                        "desired_threads",
                        "desired_processes",
                        "source",
                        "actual_threads",
                    ],
                },
            }
        },
        "required": ["pools"],
    },
    "PoolScale": {
        "type": "object",
        "properties": {
            "threads": {
                "type": "object",
                "description": "Queue name to threads per worker process (0 stops the pool).",
                "minProperties": 1,
                "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 256},
            }
        },
        "required": ["threads"],
        "additionalProperties": False,
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

# A listed job: the job without its documents (params, result), which only a single job shows.
SCHEMAS["JobSummary"] = JOB_SUMMARY_SCHEMA
SCHEMAS["WebhookDeliveries"] = DELIVERIES_SCHEMA
