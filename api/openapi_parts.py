"""The pieces every part of the OpenAPI document is built from: the error responses, a JSON
response, a schema reference and the `owner` query parameter, so the operation modules
(`api.openapi`, `api.openapi_jobs`, ...) describe alike what they share."""

from __future__ import annotations

from typing import Any

from skillq.engine.collection_files import MAX_OWNER_LENGTH

ERRORS = {
    400: "The request body is not JSON, or is nested too deeply.",
    401: "No credentials, or wrong ones (see WWW-Authenticate).",
    403: "The caller's role does not allow this (WWW-Authenticate names the scope).",
    404: "No such job or collection, or not the caller's.",
    409: "The job's state does not allow this.",
    413: "The request body is larger than server.max_body_size.",
    422: "The request breaks a schema; details name each failing path.",
    429: "`rate_limited`: a per-owner quota ([quotas]) is reached; the message and "
    "details[0].quota name it.",
    503: "The broker, the store or the identity provider cannot be reached.",
}


OWNER_PARAMETER: dict[str, Any] = {
    "name": "owner",
    "in": "query",
    "description": "Whose collection. Only an admin may name another owner than itself "
    "(anyone else: 403); default: the caller.",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_OWNER_LENGTH,
        "pattern": "^[^\\x00]*$",
    },
}


def error(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": ERRORS[status],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if status in (401, 403):
        # Bearer realm, resource_metadata and scope (RFC 6750, RFC 9728); a 403 for a
        # missing role says error="insufficient_scope", and names the scope that would do.
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return response


def json_response(description: str, schema: dict[str, Any], **headers: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = {
            name.replace("_", "-"): {"description": text, "schema": {"type": "string"}}
            for name, text in headers.items()
        }
    return response


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def auth_errors(statuses: list[int]) -> dict[str, Any]:
    return {str(status): error(status) for status in statuses}
