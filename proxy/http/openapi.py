"""The OpenAPI 3.1 document, generated from the route table and the pydantic models that validate
requests, so the document and the behaviour cannot drift apart."""

from __future__ import annotations

import functools
from typing import Any

from pydantic.json_schema import models_json_schema

from proxy import __version__
from proxy.http.routes import ROUTES
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
_WRITE_ERRORS = (
    "400",
    "401",
    "403",
    "404",
    "409",
    "412",
    "413",
    "415",
    "422",
    "429",
    "503",
    "504",
)
_READ_ERRORS = ("400", "401", "403", "404", "422", "429", "503")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }


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
        if r.name == "query_agents":
            for name, schema in models.AgentQuery.model_json_schema()["properties"].items():
                params.append(
                    {
                        "name": name,
                        "in": "query",
                        "required": False,
                        "schema": schema,
                        "explode": False,
                    }
                )
        if r.role is not None:
            op["security"] = [{"bearer": []}]
            params.append(
                {
                    "name": "X-Request-Timeout",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1},
                }
            )
        if r.method in ("POST", "PATCH", "PUT", "DELETE") and r.role is not None:
            params.append(
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
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
                    "load and performance do not change it",
                    "schema": {"type": "string"},
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
        is_write = r.method != "GET" and r.role is not None and r.name != "admin_breaker"
        if is_write:
            responses["202"] = {
                "description": "journaled while PostgreSQL is unavailable",
                "content": {"application/json": {"schema": _ref("Accepted")}},
            }
        if r.role is not None:
            for status in _WRITE_ERRORS if r.method != "GET" else _READ_ERRORS:
                responses[status] = _problem("error")
        if r.name == "readyz":
            responses["503"] = {"description": "not ready"}
        op["responses"] = responses
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "registry-proxy",
            "version": __version__,
            "description": "Resilience sidecar for the agent registry.",
        },
        "servers": [{"url": "http://127.0.0.1:3580"}],
        "paths": paths,
        "components": {
            "schemas": schemas["$defs"],
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
