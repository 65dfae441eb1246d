"""The registry's agents over HTTP: register, read, query, change, report on and unregister an
agent, and the registry's totals.

Thin handlers: each reads and checks what the request carries (the agent id in the path, the
Idempotency-Key and If-Match headers, the body or the query string), asks `RegistryService`, and
sends its answer as it is. Writes carry a fingerprint of what the client sent, so that a retry
under the same Idempotency-Key can be told from a different request.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from proxy.http import keys
from proxy.http.answer import json_response
from proxy.http.body import read_model, read_model_within, read_query
from proxy.http.problems import ProblemError
from proxy.registry.models import (
    ID_PATTERN,
    IF_MATCH_PATTERN,
    AgentQuery,
    HeartbeatRequest,
    LoadRequest,
    PatchRequest,
    PerformanceRequest,
    RegisterRequest,
)
from proxy.registry.requests import WriteKind, request_hash
from proxy.service import Answer, RegistryService, RequestContext
from proxy.settings import RequestSettings

_ID = re.compile(ID_PATTERN)
_IF_MATCH = re.compile(IF_MATCH_PATTERN)
# Query parameters that are lists: comma-separated, or the parameter repeated.
_LIST_PARAMS = ("languages", "specializations")


def _agent_id(request: web.Request) -> str:
    agent_id = request.match_info["agent_id"]
    if not _ID.fullmatch(agent_id):
        raise ProblemError(
            422,
            "agent_id is not a valid id",
            errors=[{"field": "agent_id", "message": f"must match {ID_PATTERN}"}],
        )
    return agent_id


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _ID.fullmatch(key):
        raise ProblemError(
            422,
            "Idempotency-Key is not valid",
            errors=[{"field": "Idempotency-Key", "message": f"must match {ID_PATTERN}"}],
        )
    return key


def _if_match(request: web.Request) -> int | None:
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    raw = raw.strip()
    if _IF_MATCH.fullmatch(raw) is None:
        raise ProblemError(400, 'If-Match must be an ETag of this API, like "12"')
    if raw == "*":
        return None
    return int(raw.removeprefix("W/").strip('"'))


async def _write(
    request: web.Request, kind: WriteKind, payload: dict[str, Any], target: str | None, client: Any
) -> web.Response:
    service, ctx = request.app[keys.SERVICE], request[keys.CONTEXT]
    return json_response(await _written(request, service, ctx, kind, payload, target, client))


def _written(
    request: web.Request,
    service: RegistryService,
    ctx: RequestContext,
    kind: WriteKind,
    payload: dict[str, Any],
    target: str | None,
    client: Any,
) -> Awaitable[Answer]:
    """The service's answer to the write, with the fingerprint of what the client sent."""
    return service.write(
        ctx,
        kind,
        payload,
        req_hash=request_hash(kind, target, client),
        idempotency_key=_idempotency_key(request),
    )


# ---- reads ------------------------------------------------------------------------------------


async def get_agent(request: web.Request) -> web.Response:
    agent_id = _agent_id(request)
    answer = await request.app[keys.SERVICE].get_agent(request[keys.CONTEXT], agent_id)
    return json_response(answer)


def agent_query(request: web.Request) -> AgentQuery:
    """The capability query of a request's query string (the front door reads it here too)."""
    return read_query(request, AgentQuery, lists=_LIST_PARAMS)


async def query_agents(request: web.Request) -> web.Response:
    answer = await request.app[keys.SERVICE].query(request[keys.CONTEXT], agent_query(request))
    return json_response(answer)


async def stats(request: web.Request) -> web.Response:
    return json_response(await request.app[keys.SERVICE].stats(request[keys.CONTEXT]))


# ---- writes -----------------------------------------------------------------------------------


async def register(request: web.Request) -> web.Response:
    service, ctx = request.app[keys.SERVICE], request[keys.CONTEXT]
    settings = request.app[keys.SETTINGS].request
    return json_response(await register_answer(request, service, ctx, settings))


async def register_answer(
    request: web.Request, service: RegistryService, ctx: RequestContext, limits: RequestSettings
) -> Answer:
    """A registration's answer (the front door calls this too, with what the route would give)."""
    body = await read_model_within(request, RegisterRequest, limits)
    data = body.model_dump(mode="json")
    answer = await _written(request, service, ctx, WriteKind.REGISTER, {"body": data}, None, data)
    if answer.status == 201:
        answer.headers.setdefault("Location", f"/v1/agents/{data['agent_id']}")
    return answer


async def patch_agent(request: web.Request) -> web.Response:
    agent_id = _agent_id(request)
    if_match = _if_match(request)
    body = await read_model(request, PatchRequest)
    data = body.model_dump(mode="json", exclude_unset=True)
    payload = {"agent_id": agent_id, "body": data, "if_match": if_match}
    return await _write(request, WriteKind.PATCH, payload, agent_id, [data, if_match])


async def put_load(request: web.Request) -> web.Response:
    return await _agent_write(request, load_answer)


async def heartbeat(request: web.Request) -> web.Response:
    return await _agent_write(request, heartbeat_answer)


async def post_performance(request: web.Request) -> web.Response:
    return await _agent_write(request, performance_answer)


AgentWrite = Callable[
    [web.Request, RegistryService, RequestContext, RequestSettings, str], Awaitable[Answer]
]
"""The answer to a write addressed to one agent (its id in the path, already checked): the
route's handler and the front door both call one."""


async def _agent_write(request: web.Request, answer_of: AgentWrite) -> web.Response:
    agent_id = _agent_id(request)
    service, ctx = request.app[keys.SERVICE], request[keys.CONTEXT]
    limits = request.app[keys.SETTINGS].request
    return json_response(await answer_of(request, service, ctx, limits, agent_id))


async def load_answer(
    request: web.Request,
    service: RegistryService,
    ctx: RequestContext,
    limits: RequestSettings,
    agent_id: str,
) -> Answer:
    body = await read_model_within(request, LoadRequest, limits)
    data = body.model_dump(mode="json")
    payload = {"agent_id": agent_id, "body": data}
    return await _written(request, service, ctx, WriteKind.LOAD, payload, agent_id, data)


async def heartbeat_answer(
    request: web.Request,
    service: RegistryService,
    ctx: RequestContext,
    limits: RequestSettings,
    agent_id: str,
) -> Answer:
    body = await read_model_within(request, HeartbeatRequest, limits, allow_empty=True)
    client = body.model_dump(mode="json", exclude_unset=True)
    observed = body.observed_at or datetime.now(UTC)
    payload = {"agent_id": agent_id, "observed_at": observed.isoformat()}
    return await _written(request, service, ctx, WriteKind.HEARTBEAT, payload, agent_id, client)


async def performance_answer(
    request: web.Request,
    service: RegistryService,
    ctx: RequestContext,
    limits: RequestSettings,
    agent_id: str,
) -> Answer:
    body = await read_model_within(request, PerformanceRequest, limits)
    client = body.model_dump(mode="json")
    data = dict(client)
    if data["event_id"] is None:
        # Generated before the first attempt, so a retry or a replay counts it once.
        data["event_id"] = service.new_event_id()
    payload = {"agent_id": agent_id, "body": data}
    return await _written(request, service, ctx, WriteKind.PERFORMANCE, payload, agent_id, client)


async def delete_agent(request: web.Request) -> web.Response:
    agent_id = _agent_id(request)
    return await _write(request, WriteKind.UNREGISTER, {"agent_id": agent_id}, agent_id, None)
