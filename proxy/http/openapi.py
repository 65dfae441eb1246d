"""The OpenAPI 3.1 document, generated from the route table and the pydantic models that validate
requests, so the document and the behaviour cannot drift apart.

The handler that serves it is in the table, so the table cannot import this module:
`proxy.http.application` hands the handler `encoded` through the app (`keys.API_DOCUMENT`).
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from proxy import __version__
from proxy.http.middleware import DEADLINE_MAX_MS
from proxy.http.routes import ROUTES, Route
from proxy.registry import models

_COMPONENTS = (
    models.RegisterRequest,
    models.PatchRequest,
    models.LoadRequest,
    models.HeartbeatRequest,
    models.PerformanceRequest,
    models.BreakerCommand,
    models.Agent,
    models.QueryAnswer,
    models.PerformanceAnswer,
    models.HeartbeatAnswer,
    models.Stats,
    models.Accepted,
    models.Operation,
    models.Problem,
)

_SUCCESS = {"POST /v1/agents": "201", "DELETE /v1/agents/{agent_id}": "204"}
# Answers besides the main one: a performance event counted now is a 201 (already counted: 200).
_ALSO = {"POST /v1/agents/{agent_id}/performance": ("201", "PerformanceAnswer")}
_LIST_DESCRIPTION = (
    "comma-separated, or the parameter repeated; an empty value is an empty list, an empty item "
    "is refused"
)

# Why each problem is answered; every one is an RFC 9457 document (application/problem+json).
_PROBLEMS = {
    "400": "the request cannot be read: a body that is not JSON, Authorization or "
    "X-Request-Timeout given twice, a malformed X-Request-Timeout or If-Match",
    "401": "no bearer token, or one the sidecar does not know",
    "403": "the token's role may not call this operation",
    "404": "no such agent or operation in the token's tenant",
    "408": "the body did not arrive within request.read_timeout_s",
    "409": "the agent is registered already (duplicate-agent), or the tenant holds max_agents "
    "agents (registry-full)",
    "412": "If-Match names another revision of the agent",
    "413": "the body is larger than request.max_body_bytes",
    "415": "Content-Type is not application/json",
    "422": "a field, parameter or header breaks a rule this document states (`errors` says "
    "which), or an Idempotency-Key used before with a different request",
    "429": "the token's rate limit is spent; Retry-After says when to come back",
    "503": "PostgreSQL is unavailable and nothing can stand in (Retry-After), or the sidecar "
    "is overloaded",
    "504": "the deadline passed before PostgreSQL answered; a write may still commit, and "
    "retrying it with the same Idempotency-Key is safe",
}
_REQUIRED_HEADERS = {
    "401": {"WWW-Authenticate": "Bearer realm, or the invalid_token error"},
    "429": {"Retry-After": "seconds"},
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _problem(status: str) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": _PROBLEMS[status],
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }
    headers = _REQUIRED_HEADERS.get(status)
    if headers:
        answer["headers"] = {
            name: {"description": text, "required": True, "schema": {"type": "string"}}
            for name, text in headers.items()
        }
    return answer


def _is_write(r: Route) -> bool:
    """Writes of the registry: journaled during outages, and they honour Idempotency-Key."""
    return r.method != "GET" and r.role is not None and r.name != "admin_breaker"


def _problems_of(r: Route) -> list[str]:
    """The problems an operation can answer with, from what it reads and what it calls."""
    if r.role is None:
        return []
    statuses = {"400", "401", "403", "429"}
    if r.name != "status":
        statuses |= {"503", "504"}  # it calls PostgreSQL
    if "{" in r.path:
        statuses |= {"404", "422"}
    if r.query is not None or _is_write(r):
        statuses.add("422")
    if r.body is not None:
        statuses |= {"408", "413", "415", "422"}
    if r.name == "register":
        statuses.add("409")
    if r.name == "patch_agent":
        statuses.add("412")
    return sorted(statuses)


def _plain(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without what only a JSON body can carry (null) or needs (a title)."""
    schema = {k: v for k, v in schema.items() if k != "title"}
    if "anyOf" in schema:
        kept = [s for s in schema["anyOf"] if s != {"type": "null"}]
        if len(kept) == 1:
            schema = {**{k: v for k, v in schema.items() if k != "anyOf"}, **kept[0]}
    if schema.get("default", 0) is None:
        del schema["default"]
    return schema


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    params = []
    for name, schema in model.model_json_schema()["properties"].items():
        param: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": False,
            "schema": _plain(schema),
        }
        if param["schema"].get("type") == "array":
            param.update(style="form", explode=False, description=_LIST_DESCRIPTION)
        params.append(param)
    return params


@functools.cache
def document() -> dict[str, Any]:
    _, schemas = models_json_schema(
        [
            (m, "validation" if m.__name__.endswith(("Request", "Command")) else "serialization")
            for m in _COMPONENTS
        ],
        ref_template="#/components/schemas/{model}",
    )
    paths: dict[str, dict[str, Any]] = {}
    for r in ROUTES:
        op: dict[str, Any] = {"operationId": r.name, "summary": r.summary}
        params: list[dict[str, Any]] = []
        for name in ("agent_id", "op_id"):
            if "{" + name + "}" in r.path:
                params.append(
                    {
                        "name": name,
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": models.ID_PATTERN},
                    }
                )
        if r.query is not None:
            # The query string's parameters, validated by this model exactly as documented.
            params += _query_parameters(r.query)
        if r.role is not None:
            op["security"] = [{"bearer": []}]
            params.append(
                {
                    "name": "X-Request-Timeout",
                    "in": "header",
                    "required": False,
                    "description": "milliseconds, ASCII digits; lowers the default deadline "
                    "(request.default_timeout_ms) for this request, never raises it",
                    "schema": {"type": "integer", "minimum": 1, "maximum": DEADLINE_MAX_MS},
                }
            )
        if _is_write(r):
            params.append(
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "the same key and request again: the first answer again; "
                    "the same key with another request: 422",
                    "schema": {"type": "string", "pattern": models.ID_PATTERN},
                }
            )
        if r.name == "patch_agent":
            params.append(
                {
                    "name": "If-Match",
                    "in": "header",
                    "required": False,
                    "description": "the ETag of a read (the agent's revision); heartbeats, "
                    "load and performance do not change it. `*`, or the revision quoted "
                    '(strong or weak) or bare, at most 18 digits: "12", W/"12", 12',
                    "schema": {"type": "string", "pattern": models.IF_MATCH_PATTERN},
                }
            )
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {
                "required": r.name != "heartbeat",
                "content": {"application/json": {"schema": _ref(r.body.__name__)}},
            }
        code = _SUCCESS.get(f"{r.method} {r.path}", "200")
        success: dict[str, Any] = {"description": "success"}
        if r.answer is not None:
            success["content"] = {"application/json": {"schema": _ref(r.answer)}}
        responses: dict[str, Any] = {code: success}
        extra = _ALSO.get(f"{r.method} {r.path}")
        if extra is not None:
            responses[extra[0]] = {
                "description": "success",
                "content": {"application/json": {"schema": _ref(extra[1])}},
            }
        if _is_write(r):
            responses["202"] = {
                "description": "journaled while PostgreSQL is unavailable",
                "content": {"application/json": {"schema": _ref("Accepted")}},
            }
        for status in _problems_of(r):
            responses[status] = _problem(status)
        if r.name == "readyz":
            responses["503"] = {"description": "not ready"}
        op["responses"] = responses
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "registry-proxy",
            "version": __version__,
            "description": "Resilience sidecar for the agent registry.\n\n"
            "Every error is an RFC 9457 problem document (application/problem+json) with a "
            "stable `type`. Every GET operation also answers HEAD: the same status and "
            "headers, no body. A client must send its request line and headers within "
            "request.header_timeout_s (10 s by default; then 408 and the connection is closed) "
            "and its body within request.read_timeout_s (408). Past request.max_connections "
            "open connections, a new one closes the oldest idle one, or is answered 503 "
            "(too-many-connections) when every connection is busy.",
        },
        "servers": [{"url": "http://127.0.0.1:3580"}],
        "paths": paths,
        "components": {
            "schemas": schemas["$defs"],
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def encoded() -> bytes:
    """The document as /openapi.json sends it, encoded once."""
    return _encoded()


@functools.cache
def _encoded() -> bytes:
    return orjson.dumps(document())
