"""Write handlers of the asyncpg baseline that do the durable work the sidecar does per write.

The one-statement baseline writes only the effect, so its ratio to the sidecar mixes what the
sidecar itself costs (HTTP, auth, breaker, metrics) with what its guarantees cost in PostgreSQL.
These handlers leave the rows the sidecar leaves for the same request, as a plain app would
write them with asyncpg, so that ratio is the sidecar's own overhead:

- registration: the agent row, the tenant's live agent count (the capacity check, whose row lock
  serializes the tenant's registrations), a ledger row in ``operations`` holding the answer, and
  an audit row in ``audit_log``;
- task outcome: the event in ``performance_events``, the agent's sums, the ledger row and the
  audit row;
- the ``NOTIFY`` to every replica: the schema's trigger on ``agents`` sends it for any change of
  the row, so these writes send it exactly as the sidecar's do.

Two shapes of the same work: ``ledger`` is a transaction of one statement per row (BEGIN, four
statements, COMMIT: six round trips), what an app written in the obvious way sends, with the
statement that locks a shared row (the tenant's count, the agent's sums) as late as it can be;
``ledger-1rt`` is one statement of data-modifying CTEs, atomic on its own, so one round trip.
Nothing here comes from the sidecar's code: the schema is shared, the statements are not.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from bench.baselines import COLUMNS, JSON, PoolKey, Writes, document, json_response

# Who asked, as the app's own authentication would name the caller (the baseline has none).
ACTOR = "bench-app"
# The sidecar's bench setting: capacity is checked, never reached.
MAX_AGENTS = 1_000_000

_request_numbers = itertools.count(1)
_REQUEST_PREFIX = os.urandom(4).hex()


def _request_id() -> str:
    # A per-process prefix and a counter: unique without a random read per request.
    return f"{_REQUEST_PREFIX}-{next(_request_numbers)}"


def _request_hash(raw: bytes) -> str:
    """What the ledger compares a retried request with."""
    return hashlib.sha256(raw).hexdigest()


def _performance_document(agent_id: str, event_id: str, row: Any) -> dict[str, Any]:
    n = row["task_count"]
    return {
        "agent_id": agent_id,
        "event_id": event_id,
        "counted": True,
        "performance": {
            "task_count": n,
            "success_rate": row["success_count"] / n,
            "average_quality": row["quality_sum"] / n,
            "average_latency_ms": row["latency_ms_sum"] / n,
        },
    }


class _Refused(Exception):
    def __init__(self, status: int, title: str) -> None:
        self.status = status
        self.title = title


# ---- one transaction, one statement per row ----------------------------------------------------

_INSERT_AGENT = (
    "INSERT INTO agents (tenant_id, agent_id, name, model_family, task_types, languages, "
    "specializations, max_concurrent_tasks) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
    f"RETURNING {COLUMNS}"
)
_TAKE_SLOT = (
    "INSERT INTO tenants AS t (tenant_id, agent_count) VALUES ($1, 1) "
    "ON CONFLICT (tenant_id) DO UPDATE SET agent_count = t.agent_count + 1 "
    "WHERE t.agent_count < $2 RETURNING agent_count"
)
_INSERT_LEDGER = (
    "INSERT INTO operations (tenant_id, op_id, kind, request_hash, status, response_status, "
    "response_body) VALUES ($1, $2, $3, $4, 'applied', $5, $6::jsonb)"
)
_INSERT_AUDIT = (
    "INSERT INTO audit_log (tenant_id, actor, action, target, outcome, request_id, op_id) "
    "VALUES ($1, $2, $3, $4, 'applied', $5, $6)"
)
_INSERT_EVENT = (
    "INSERT INTO performance_events (tenant_id, event_id, agent_id, success, quality_score, "
    "latency_ms) VALUES ($1, $2, $3, $4, $5, $6)"
)
_ADD_OUTCOME = (
    "UPDATE agents SET task_count = task_count + 1, success_count = success_count + $3, "
    "quality_sum = quality_sum + $4, latency_ms_sum = latency_ms_sum + $5, updated_at = now(), "
    "version = nextval('agent_version_seq') "
    "WHERE tenant_id = $1 AND agent_id = $2 AND deleted_at IS NULL "
    "RETURNING task_count, success_count, quality_sum, latency_ms_sum"
)


def _transaction_writes(tenant: str, write_tenant: str) -> Writes:
    async def register(request: web.Request) -> web.Response:
        raw = await request.read()
        body = orjson.loads(raw)
        caps = body["capabilities"]
        agent_id = body["agent_id"]
        op_id = uuid.uuid4().hex
        try:
            async with request.app[PoolKey].acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    _INSERT_AGENT,
                    write_tenant,
                    agent_id,
                    body["name"],
                    body["model_family"],
                    caps["task_types"],
                    caps.get("languages", []),
                    caps.get("specializations", []),
                    body.get("max_concurrent_tasks", 10),
                )
                answer = orjson.dumps(document(row, datetime.now(UTC)))
                await conn.execute(
                    _INSERT_LEDGER,
                    write_tenant,
                    op_id,
                    "register",
                    _request_hash(raw),
                    201,
                    answer.decode(),
                )
                await conn.execute(
                    _INSERT_AUDIT, write_tenant, ACTOR, "register", agent_id, _request_id(), op_id
                )
                # The tenant's row last: its lock serializes the tenant's registrations until the
                # commit, so it is held for one round trip rather than three. (The agent's row
                # is new, so nothing else waits for it.)
                if await conn.fetchval(_TAKE_SLOT, write_tenant, MAX_AGENTS) is None:
                    raise _Refused(409, "registry full")
        except asyncpg.UniqueViolationError:
            return json_response({"title": "already registered"}, 409)
        except _Refused as refused:
            return json_response({"title": refused.title}, refused.status)
        return web.Response(status=201, body=answer, content_type=JSON)

    async def performance(request: web.Request) -> web.Response:
        raw = await request.read()
        body = orjson.loads(raw)
        agent_id = request.match_info["agent_id"]
        event_id = body.get("event_id") or uuid.uuid4().hex
        op_id = uuid.uuid4().hex
        success = bool(body["success"])
        quality, latency = float(body["quality_score"]), float(body["latency_ms"])
        try:
            async with request.app[PoolKey].acquire() as conn, conn.transaction():
                await conn.execute(
                    _INSERT_EVENT, tenant, event_id, agent_id, success, quality, latency
                )
                await conn.execute(
                    _INSERT_AUDIT, tenant, ACTOR, "performance", agent_id, _request_id(), op_id
                )
                # The agent's row lock, taken here, is held until the commit: the statements
                # that need nothing from it come first, and only the ledger row (which stores
                # the answer, so needs the new sums) comes after.
                row = await conn.fetchrow(
                    _ADD_OUTCOME, tenant, agent_id, 1 if success else 0, quality, latency
                )
                if row is None:
                    raise _Refused(404, "not found")
                answer = orjson.dumps(_performance_document(agent_id, event_id, row))
                await conn.execute(
                    _INSERT_LEDGER,
                    tenant,
                    op_id,
                    "performance",
                    _request_hash(raw),
                    201,
                    answer.decode(),
                )
        except _Refused as refused:
            return json_response({"title": refused.title}, refused.status)
        return web.Response(status=201, body=answer, content_type=JSON)

    return Writes(register=register, performance=performance)


# ---- one statement: the same rows in data-modifying CTEs ---------------------------------------

# The answer stored in the ledger has to be built in the statement, from the rows it writes.
_AGENT_JSON = (
    "jsonb_build_object('agent_id', agent_id, 'name', name, 'model_family', model_family, "
    "'capabilities', jsonb_build_object('task_types', task_types, 'languages', languages, "
    "'specializations', specializations), 'max_concurrent_tasks', max_concurrent_tasks, "
    "'status', 'active', 'registered_at', registered_at, 'last_heartbeat_at', last_heartbeat_at, "
    "'updated_at', updated_at, 'version', version, 'load', jsonb_build_object('active_tasks', "
    "active_tasks, 'queued_tasks', queued_tasks, 'utilization', "
    "least(1.0, active_tasks::float8 / max_concurrent_tasks)), 'performance', "
    "jsonb_build_object('task_count', 0, 'success_rate', NULL, 'average_quality', NULL, "
    "'average_latency_ms', NULL))"
)

# A full tenant must undo the agent's row too, and one statement can only be undone by failing:
# no slot taken makes the division by zero that fails it (SQLSTATE 22012).
_REGISTER_1RT = (
    f"WITH a AS ({_INSERT_AGENT}), "
    "slot AS (INSERT INTO tenants AS t (tenant_id, agent_count) SELECT $1, 1 FROM a "
    "ON CONFLICT (tenant_id) DO UPDATE SET agent_count = t.agent_count + 1 "
    "WHERE t.agent_count < $9 RETURNING agent_count), "
    "ledger AS (INSERT INTO operations (tenant_id, op_id, kind, request_hash, status, "
    f"response_status, response_body) SELECT $1, $10, 'register', $11, 'applied', 201, "
    f"{_AGENT_JSON} FROM a), "
    "audit AS (INSERT INTO audit_log (tenant_id, actor, action, target, outcome, request_id, "
    "op_id) SELECT $1, $12, 'register', agent_id, 'applied', $13, $10 FROM a) "
    f"SELECT {COLUMNS}, 1 / (SELECT count(*)::int FROM slot) AS slot FROM a"
)

_PERFORMANCE_1RT = (
    "WITH u AS (UPDATE agents SET task_count = task_count + 1, "
    "success_count = success_count + $4, quality_sum = quality_sum + $5, "
    "latency_ms_sum = latency_ms_sum + $6, updated_at = now(), "
    "version = nextval('agent_version_seq') "
    "WHERE tenant_id = $1 AND agent_id = $2 AND deleted_at IS NULL "
    "RETURNING agent_id, task_count, success_count, quality_sum, latency_ms_sum), "
    "event AS (INSERT INTO performance_events (tenant_id, event_id, agent_id, success, "
    "quality_score, latency_ms) SELECT $1, $3, agent_id, $7, $5, $6 FROM u), "
    "ledger AS (INSERT INTO operations (tenant_id, op_id, kind, request_hash, status, "
    "response_status, response_body) SELECT $1, $8, 'performance', $9, 'applied', 201, "
    "jsonb_build_object('agent_id', agent_id, 'event_id', $3::text, 'counted', true, "
    "'performance', jsonb_build_object('task_count', task_count, "
    "'success_rate', success_count::float8 / task_count, "
    "'average_quality', quality_sum / task_count, "
    "'average_latency_ms', latency_ms_sum / task_count)) FROM u), "
    "audit AS (INSERT INTO audit_log (tenant_id, actor, action, target, outcome, request_id, "
    "op_id) SELECT $1, $10, 'performance', agent_id, 'applied', $11, $8 FROM u) "
    "SELECT task_count, success_count, quality_sum, latency_ms_sum FROM u"
)


def _one_statement_writes(tenant: str, write_tenant: str) -> Writes:
    async def register(request: web.Request) -> web.Response:
        raw = await request.read()
        body = orjson.loads(raw)
        caps = body["capabilities"]
        try:
            row = await request.app[PoolKey].fetchrow(
                _REGISTER_1RT,
                write_tenant,
                body["agent_id"],
                body["name"],
                body["model_family"],
                caps["task_types"],
                caps.get("languages", []),
                caps.get("specializations", []),
                body.get("max_concurrent_tasks", 10),
                MAX_AGENTS,
                uuid.uuid4().hex,
                _request_hash(raw),
                ACTOR,
                _request_id(),
            )
        except asyncpg.UniqueViolationError:
            return json_response({"title": "already registered"}, 409)
        except asyncpg.DivisionByZeroError:
            return json_response({"title": "registry full"}, 409)
        assert row is not None
        return json_response(document(row, datetime.now(UTC)), 201)

    async def performance(request: web.Request) -> web.Response:
        raw = await request.read()
        body = orjson.loads(raw)
        agent_id = request.match_info["agent_id"]
        event_id = body.get("event_id") or uuid.uuid4().hex
        success = bool(body["success"])
        row = await request.app[PoolKey].fetchrow(
            _PERFORMANCE_1RT,
            tenant,
            agent_id,
            event_id,
            1 if success else 0,
            float(body["quality_score"]),
            float(body["latency_ms"]),
            success,
            uuid.uuid4().hex,
            _request_hash(raw),
            ACTOR,
            _request_id(),
        )
        if row is None:
            return json_response({"title": "not found"}, 404)
        return json_response(_performance_document(agent_id, event_id, row), 201)

    return Writes(register=register, performance=performance)


def ledger_writes(tenant: str, write_tenant: str, *, one_round_trip: bool) -> Writes:
    """The same-work write handlers: reads of `tenant`, registrations into `write_tenant`."""
    if one_round_trip:
        return _one_statement_writes(tenant, write_tenant)
    return _transaction_writes(tenant, write_tenant)
