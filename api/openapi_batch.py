"""The OpenAPI entry of `POST /api/v1/jobs:batch`, keyed as `api.openapi` keys its own.

Its items are the single submit's body schema, so the two cannot drift apart."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def batch_operations(
    submission: dict[str, Any],
    max_batch_jobs: int,
    auth: list[int],
    json: Callable[..., dict[str, Any]],
    error: Callable[[int], dict[str, Any]],
) -> dict[tuple[str, str], Any]:
    jobs = {
        "type": "object",
        "properties": {"jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}}},
        "required": ["jobs"],
    }
    body = {
        "type": "object",
        "properties": {
            "jobs": {
                "type": "array",
                "items": submission,
                "minItems": 1,
                "maxItems": max_batch_jobs,
                "description": "Submissions, each as `POST /api/v1/jobs` takes it; at most "
                "`jobs.max_batch_jobs`.",
            }
        },
        "required": ["jobs"],
        "additionalProperties": False,
    }
    return {
        ("/api/v1/jobs:batch", "post"): {
            "summary": "Submit many jobs at once, all or nothing",
            "description": "Every item is checked as a single submit is; if any is refused, "
            "nothing is written and the error names every refused item by index "
            "(`body.jobs[3].params.x`; the items' own code when they share one, else "
            "`invalid_params`). The jobs are written in one transaction and counted against "
            "the owner's quotas together. Idempotency keys hold per item. If the broker "
            "refuses the sends, the 503's details say per item whether its job was queued "
            "or failed (`EnqueueError`).",
            "tags": ["jobs"],
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {
                "202": json("Accepted: the jobs, in the order of the items.", jobs),
                "200": json("Every item repeated an earlier job's idempotency_key.", jobs),
                "404": {
                    **error(404),
                    "description": "Every refused item's params name a skill or tool that "
                    "does not exist.",
                },
                "409": {
                    **error(409),
                    "description": "`idempotency_key_reused`: an item's key names a job of a "
                    "different request, or an earlier item's with a different one.",
                },
                "429": {
                    **error(429),
                    "headers": {
                        "Retry-After": {
                            "description": "Seconds worth waiting ([quotas] retry_after_secs).",
                            "schema": {"type": "string"},
                        }
                    },
                },
                **{str(s): error(s) for s in [400, *auth, 413, 422, 503]},
            },
        }
    }
