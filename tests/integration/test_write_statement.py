"""A write is one statement, `registry_write_v2` (migrations 0004, 0005), and so one round trip:
its ledger check, effect, ledger row, audit row and notification together.

What the separate statements did, the statement does: an op id seen before gets its stored
answer and no second effect, a different request under it is refused, a refusal leaves its
ledger and audit rows and nothing else, a write inside a caller's transaction fails alone, and
row-level security walls the caller in. The answers PostgreSQL renders are the sidecar's own, to
the type of each number and the digits of each timestamp; an agent's document, which the sidecar
renders from the row the statement returns, is given back to a retry byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlparse

import asyncpg
import orjson
import pytest

from proxy.registry import errors
from proxy.registry.requests import WriteKind, request_hash
from proxy.store import repository
from proxy.store.db import tenant_settings
from tests.conftest import agent_body

# ---- helpers ---------------------------------------------------------------------------------


def _tenant() -> str:
    return f"ws-{uuid.uuid4().hex[:12]}"


def _ctx(tenant: str, max_agents: int = 10) -> repository.WriteContext:
    return repository.WriteContext(tenant, "tester", "req-1", max_agents)


async def _write(
    conn: asyncpg.Connection,
    ctx: repository.WriteContext,
    kind: str,
    payload: dict[str, Any],
    *,
    op_id: str | None = None,
    req_hash: str | None = None,
) -> repository.WriteOutcome:
    return await repository.execute_write(
        conn,
        ctx,
        kind=kind,
        payload=payload,
        op_id=op_id or uuid.uuid4().hex,
        req_hash=req_hash or request_hash(kind, None, payload),
    )


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _payloads(agent_id: str) -> dict[str, dict[str, Any]]:
    """A payload of every kind, about `agent_id`, as the HTTP layer builds them."""
    return {
        "register": {"body": agent_body(agent_id)},
        "patch": {"agent_id": agent_id, "body": {"name": "renamed"}, "if_match": None},
        "load": {
            "agent_id": agent_id,
            "body": {"active_tasks": 3, "queued_tasks": 1, "observed_at": _now()},
        },
        "heartbeat": {"agent_id": agent_id, "observed_at": _now()},
        "performance": {
            "agent_id": agent_id,
            "body": {
                "event_id": uuid.uuid4().hex,
                "success": True,
                "quality_score": 0.5,
                "latency_ms": 12.5,
                "task_type": None,
            },
        },
        "unregister": {"agent_id": agent_id},
        "admin": {"action": "breaker", "target": "forced_open"},
    }


def _strict(doc: Any) -> bytes:
    """A parsed JSON document in a form where 1 and 1.0 differ, and key order does not."""
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def _keys(doc: Any) -> Any:
    """The key order of a document, nested."""
    if isinstance(doc, dict):
        return [(k, _keys(v)) for k, v in doc.items()]
    return None


class RoundTrips:
    """A relay between a client and PostgreSQL that counts round trips: the client speaking
    after the server has spoken starts a new one."""

    def __init__(self, dsn: str) -> None:
        url = urlparse(dsn)
        self._dsn = url
        self._upstream = (url.hostname or "127.0.0.1", url.port or 5432)
        self.count = 0
        self._server_spoke = True
        self._server: asyncio.Server | None = None

    @property
    def dsn(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        user, _, _ = self._dsn.netloc.rpartition("@")
        return self._dsn._replace(netloc=f"{user}@127.0.0.1:{port}".lstrip("@")).geturl()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)

        async def pump(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, from_client: bool
        ) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    if from_client and self._server_spoke:
                        self.count += 1
                    self._server_spoke = not from_client
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))


@pytest.fixture
async def counted(migrated_dsn: str) -> AsyncIterator[tuple[asyncpg.Connection, RoundTrips]]:
    trips = RoundTrips(migrated_dsn)
    await trips.start()
    conn = await asyncpg.connect(trips.dsn)
    try:
        yield conn, trips
    finally:
        await conn.close()
        await trips.close()


# ---- one round trip --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [k.value for k in WriteKind])
async def test_each_kind_of_write_is_one_round_trip(
    counted: tuple[asyncpg.Connection, RoundTrips], db: asyncpg.Connection, kind: str
) -> None:
    conn, trips = counted
    ctx = _ctx(_tenant())
    # The connection's first use of a statement prepares it: one more round trip, once.
    for agent_id in ("warm", "measured"):
        if kind not in ("register", "admin"):
            await _write(conn, ctx, "register", _payloads(agent_id)["register"])
        payload = _payloads(agent_id)[kind]
        before = trips.count
        outcome = await _write(conn, ctx, kind, payload)
        assert outcome.applied, outcome
    assert trips.count - before == 1
    assert not conn.is_in_transaction()

    # What it left: the ledger row and the audit row of the measured write.
    ledger = await db.fetchval(
        "SELECT count(*) FROM operations WHERE tenant_id = $1 AND kind = $2", ctx.tenant, kind
    )
    audit = await db.fetchval(
        "SELECT count(*) FROM audit_log WHERE tenant_id = $1 AND action LIKE $2 || '%'",
        ctx.tenant,
        kind,
    )
    assert (ledger, audit) == (2, 2)


async def test_a_refusal_and_a_replay_are_one_round_trip_each(
    counted: tuple[asyncpg.Connection, RoundTrips],
) -> None:
    conn, trips = counted
    ctx = _ctx(_tenant())
    payload = _payloads("a1")["register"]
    await _write(conn, ctx, "register", payload, op_id="first")
    before = trips.count
    refused = await _write(conn, ctx, "register", payload, op_id="second")
    replayed = await _write(conn, ctx, "register", payload, op_id="first")
    assert trips.count - before == 2
    assert isinstance(refused.problem, errors.DuplicateAgent)
    assert replayed.from_ledger and replayed.applied


async def test_inside_a_transaction_a_write_takes_its_savepoint_round_trips(
    counted: tuple[asyncpg.Connection, RoundTrips],
) -> None:
    conn, trips = counted
    ctx = _ctx(_tenant())
    await _write(conn, ctx, "register", _payloads("warm")["register"])
    async with conn.transaction():
        await _write(conn, ctx, "register", _payloads("warm-too")["register"])
        before = trips.count
        await _write(conn, ctx, "register", _payloads("a1")["register"])
        # SAVEPOINT, the write, RELEASE: a write that fails leaves the transaction usable.
        assert trips.count - before == 3


# ---- what PostgreSQL answers is the sidecar's document ---------------------------------------


async def test_postgresql_renders_the_agent_as_the_sidecar_does(db: asyncpg.Connection) -> None:
    tenant = _tenant()
    # Whole floats (written 1.0), thirds, sums that are not exact, values past 10^15 and below
    # 10^-4 (written with an exponent by one side only), no outcome yet (null), full
    # utilization, timestamps with and without a fraction and with trailing zeros, an agent
    # silent for ten minutes.
    rows = [
        ("plain", 0, 10, 0, 0, 0.0, 0.0, "2025-01-01T00:00:00+00:00"),
        ("whole", 10, 10, 2, 2, 2.0, 3000.0, "2025-01-01T00:00:00.123400+00:00"),
        ("thirds", 1, 3, 3, 1, 1.0, 1.0, "2025-06-30T23:59:59.999999+00:00"),
        ("inexact", 3, 7, 2, 1, 0.1 + 0.2, 0.7, "2025-01-01T00:00:00.000001+00:00"),
        ("huge", 2, 10, 1, 1, 0.5, 4e15, "2025-01-01T12:00:00.5+00:00"),
        ("over", 12, 10, 10, 0, 9.999999, 123456.789, "2025-01-01T12:00:00+00:00"),
        ("tiny", 0, 10, 1, 1, 1e-7, 3e17, "2025-01-01T12:00:00.000010+00:00"),
    ]
    for agent_id, active, max_tasks, count, ok, quality, latency, at in rows:
        await db.execute(
            "INSERT INTO agents (tenant_id, agent_id, name, model_family, task_types, languages,"
            " max_concurrent_tasks, active_tasks, task_count, success_count, quality_sum,"
            " latency_ms_sum, registered_at, updated_at, last_heartbeat_at) VALUES ($1, $2,"
            " 'Ag\u00e9nt \"x\"', 'gpt', '{code,review}', '{}', $3, $4, $5, $6, $7, $8, $9, $9,"
            " now() - interval '10 minutes')",
            tenant,
            agent_id,
            max_tasks,
            active,
            count,
            ok,
            quality,
            latency,
            datetime.fromisoformat(at),
        )
    await db.execute(
        "UPDATE agents SET last_heartbeat_at = now() WHERE tenant_id = $1 AND agent_id = 'plain'",
        tenant,
    )
    args = (
        "a.agent_id, a.name, a.model_family, a.task_types, a.languages, a.specializations, "
        "a.max_concurrent_tasks, a.active_tasks, a.queued_tasks, a.registered_at, "
        "a.last_heartbeat_at, a.updated_at, a.version, a.revision, a.task_count, "
        "a.success_count, a.quality_sum, a.latency_ms_sum"
    )
    async with db.transaction():
        now = await db.fetchval("SELECT now()")
        found = await db.fetch(
            f"SELECT {repository.COLUMNS}, registry_agent_json({args})::text AS doc "
            "FROM agents a WHERE tenant_id = $1 ORDER BY agent_id",
            tenant,
        )
    assert len(found) == len(rows)
    for row in found:
        expected = orjson.loads(repository.record_from_row(row).public_json(now))
        rendered = orjson.loads(row["doc"])
        assert _strict(rendered) == _strict(expected), row["agent_id"]
        assert _keys(rendered) == _keys(expected), row["agent_id"]
    statuses = {r["agent_id"]: orjson.loads(r["doc"])["status"] for r in found}
    assert statuses["plain"] == "active" and statuses["whole"] == "unresponsive"


@pytest.mark.parametrize(
    "problem",
    [errors.NotFound, errors.DuplicateAgent, errors.RegistryFull, errors.PreconditionFailed],
)
async def test_postgresql_renders_each_refusal_as_its_problem(
    db: asyncpg.Connection, problem: type[errors.RegistryError]
) -> None:
    exc = problem("agent 'x' said \"no\"")
    rendered = await db.fetchval("SELECT registry_problem_json($1, $2)::text", exc.slug, exc.detail)
    expected = {"type": exc.type, "title": exc.title, "status": exc.status, "detail": exc.detail}
    assert orjson.loads(rendered) == expected
    assert list(orjson.loads(rendered)) == list(expected)


async def test_the_answer_of_each_kind(db: asyncpg.Connection) -> None:
    ctx = _ctx(_tenant())
    registered = await _write(db, ctx, "register", _payloads("a1")["register"])
    assert registered.status == 201 and registered.record is not None
    assert registered.body == registered.record.public_json(registered.record.updated_at)

    beat = await _write(db, ctx, "heartbeat", _payloads("a1")["heartbeat"])
    assert beat.record is not None
    assert orjson.loads(beat.body) == {
        "agent_id": "a1",
        "status": "active",
        "last_heartbeat_at": beat.record.last_heartbeat_at.isoformat(),
        "version": beat.record.version,
    }

    event = _payloads("a1")["performance"]
    counted = await _write(db, ctx, "performance", event)
    again = await _write(db, ctx, "performance", event)
    assert (counted.status, again.status) == (201, 200)
    for outcome, was_counted in ((counted, True), (again, False)):
        assert outcome.record is not None
        assert orjson.loads(outcome.body) == {
            "agent_id": "a1",
            "event_id": event["body"]["event_id"],
            "counted": was_counted,
            "performance": outcome.record.performance(),
        }
    assert counted.record is not None and counted.record.task_count == 1

    # A load report older than the one held loses: the answer is the agent as it stands.
    newer = {"active_tasks": 5, "queued_tasks": 0, "observed_at": _now()}
    older = {
        "active_tasks": 9,
        "queued_tasks": 9,
        "observed_at": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
    }
    await _write(db, ctx, "load", {"agent_id": "a1", "body": newer})
    stale = await _write(db, ctx, "load", {"agent_id": "a1", "body": older})
    assert stale.status == 200 and stale.record is not None
    assert orjson.loads(stale.body)["load"]["active_tasks"] == 5

    # The revision moves with a real change only.
    same = await _write(
        db, ctx, "patch", {"agent_id": "a1", "body": {"name": "Agent a1"}, "if_match": 1}
    )
    assert same.record is not None and same.record.revision == 1
    caps = {"task_types": ["review"]}
    changed = await _write(
        db, ctx, "patch", {"agent_id": "a1", "body": {"capabilities": caps}, "if_match": 1}
    )
    assert changed.record is not None and changed.record.revision == 2
    assert changed.record.task_types == ("review",) and changed.record.languages == ()
    assert changed.record.name == "Agent a1"

    gone = await _write(db, ctx, "unregister", {"agent_id": "a1"})
    assert (gone.status, gone.body) == (204, None)
    assert gone.record is not None and gone.record.deleted_at is not None
    nothing = await _write(db, ctx, "unregister", {"agent_id": "a1"})
    assert (nothing.status, nothing.record, nothing.applied) == (204, None, True)
    back = await _write(db, ctx, "register", _payloads("a1")["register"])
    assert back.record is not None and back.record.revision == 3
    assert (
        await db.fetchval("SELECT agent_count FROM tenants WHERE tenant_id = $1", ctx.tenant) == 1
    )

    admin = await _write(db, ctx, "admin", _payloads("a1")["admin"])
    assert (admin.status, admin.body, admin.record, admin.applied) == (204, None, None, True)
    assert await db.fetchval(
        "SELECT action || ' ' || target FROM audit_log WHERE tenant_id = $1 AND op_id = "
        "(SELECT op_id FROM operations WHERE tenant_id = $1 AND kind = 'admin')",
        ctx.tenant,
    ) == ("admin:breaker forced_open")


# ---- exactly once ----------------------------------------------------------------------------


async def test_an_op_id_seen_before_gets_its_answer_and_no_second_effect(
    db: asyncpg.Connection,
) -> None:
    ctx = _ctx(_tenant())
    await _write(db, ctx, "register", _payloads("a1")["register"])
    payload = _payloads("a1")["performance"]
    first = await _write(db, ctx, "performance", payload, op_id="op-1")
    second = await _write(db, ctx, "performance", payload, op_id="op-1")
    assert first.applied and not first.from_ledger
    assert second.from_ledger and second.applied and second.record is None
    assert (second.status, orjson.loads(second.body)) == (first.status, orjson.loads(first.body))
    assert await db.fetchval("SELECT task_count FROM agents WHERE tenant_id = $1", ctx.tenant) == 1
    assert (
        await db.fetchval(
            "SELECT count(*) FROM audit_log WHERE tenant_id = $1 AND op_id = 'op-1'", ctx.tenant
        )
        == 1
    )

    with pytest.raises(errors.IdempotencyMismatch):
        await _write(db, ctx, "performance", payload, op_id="op-1", req_hash="another request")


async def test_a_retry_gets_the_agents_document_byte_for_byte_as_it_was_at_the_write(
    db: asyncpg.Connection,
) -> None:
    ctx = _ctx(_tenant())
    payloads = _payloads("a1")
    writes = [("register", "op-r"), ("patch", "op-p"), ("load", "op-l")]
    first = {op: await _write(db, ctx, kind, payloads[kind], op_id=op) for kind, op in writes}
    # The agent changes afterwards; the answers of the writes before it do not.
    await _write(db, ctx, "patch", {"agent_id": "a1", "body": {"name": "x"}, "if_match": None})
    for kind, op in writes:
        assert first[op].body is not None and first[op].record is not None
        assert orjson.loads(first[op].body)["version"] == first[op].record.version
        again = await _write(db, ctx, kind, payloads[kind], op_id=op)
        assert again.from_ledger and again.record is None and again.body == first[op].body

    # A retry ten minutes on: the document still says the status it said then.
    await db.execute(
        "UPDATE operations SET completed_at = completed_at - interval '10 minutes', "
        "response_row = jsonb_set(response_row::jsonb, '{last_heartbeat_at}', to_jsonb("
        "(response_row->>'last_heartbeat_at')::timestamptz - interval '10 minutes'))::json "
        "WHERE tenant_id = $1 AND op_id = 'op-r'",
        ctx.tenant,
    )
    later = await _write(db, ctx, "register", payloads["register"], op_id="op-r")
    doc = orjson.loads(later.body or b"null")
    assert doc["status"] == "active" and doc["name"] == "Agent a1"
    assert datetime.fromisoformat(doc["last_heartbeat_at"]) < datetime.now(UTC) - timedelta(
        minutes=9
    )


async def test_one_new_op_id_sent_twice_at_once_is_applied_once(
    migrated_dsn: str, db: asyncpg.Connection
) -> None:
    ctx = _ctx(_tenant())
    payload = _payloads("a1")["register"]
    first = await asyncpg.connect(migrated_dsn)
    second = await asyncpg.connect(migrated_dsn)
    try:
        tx = first.transaction()
        await tx.start()
        held = await _write(first, ctx, "register", payload, op_id="op-1")
        # The second finds no ledger row yet and waits on the first's rows.
        racing = asyncio.create_task(_write(second, ctx, "register", payload, op_id="op-1"))
        await asyncio.sleep(0.3)
        assert not racing.done()
        await tx.commit()
        answer = await asyncio.wait_for(racing, 10)
    finally:
        await first.close()
        await second.close()
    assert held.applied and not held.from_ledger
    assert answer.from_ledger and answer.applied and answer.status == 201
    assert orjson.loads(answer.body) == orjson.loads(held.body)
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE tenant_id = $1", ctx.tenant) == 1


async def test_a_tenant_filled_while_a_registration_ran_refuses_it_and_leaves_no_trace(
    migrated_dsn: str, db: asyncpg.Connection
) -> None:
    ctx = _ctx(_tenant(), max_agents=1)
    notified: list[str] = []
    await db.add_listener("registry_agents", lambda *args: notified.append(args[3]))
    first = await asyncpg.connect(migrated_dsn)
    second = await asyncpg.connect(migrated_dsn)
    try:
        tx = first.transaction()
        await tx.start()
        await _write(first, ctx, "register", _payloads("a1")["register"])
        # The second reads the count before the first commits: room for one more.
        racing = asyncio.create_task(_write(second, ctx, "register", _payloads("a2")["register"]))
        await asyncio.sleep(0.3)
        assert not racing.done()
        await tx.commit()
        refused = await asyncio.wait_for(racing, 10)
    finally:
        await first.close()
        await second.close()
    assert isinstance(refused.problem, errors.RegistryFull)
    assert (refused.status, refused.applied, refused.record) == (409, False, None)
    agents = await db.fetch("SELECT agent_id FROM agents WHERE tenant_id = $1", ctx.tenant)
    assert [r["agent_id"] for r in agents] == ["a1"]
    assert await db.fetchval(
        "SELECT status || ' ' || reason FROM operations WHERE tenant_id = $1 AND kind = "
        "'register' AND reason IS NOT NULL",
        ctx.tenant,
    ) == (f"rejected registry-full: tenant '{ctx.tenant}' already has the maximum of 1 agents")
    await asyncio.sleep(0.2)
    mine = [orjson.loads(n) for n in notified if ctx.tenant in n]
    assert [n["row"]["agent_id"] for n in mine] == ["a1"]


# ---- refusals --------------------------------------------------------------------------------


async def test_each_refusal_is_recorded_with_its_reason_and_replayed_as_it_was(
    db: asyncpg.Connection,
) -> None:
    ctx = _ctx(_tenant(), max_agents=1)
    await _write(db, ctx, "register", _payloads("a1")["register"])
    cases: list[tuple[str, dict[str, Any], type[errors.RegistryError], str]] = [
        (
            "register",
            _payloads("a1")["register"],
            errors.DuplicateAgent,
            "agent 'a1' is already registered",
        ),
        (
            "register",
            _payloads("a2")["register"],
            errors.RegistryFull,
            f"tenant '{ctx.tenant}' already has the maximum of 1 agents",
        ),
        (
            "patch",
            {"agent_id": "a1", "body": {"name": "x"}, "if_match": 7},
            errors.PreconditionFailed,
            "If-Match revision 7 does not match current revision 1",
        ),
        (
            "patch",
            _payloads("nobody")["patch"],
            errors.NotFound,
            "agent 'nobody' is not registered",
        ),
        ("load", _payloads("nobody")["load"], errors.NotFound, "agent 'nobody' is not registered"),
        (
            "heartbeat",
            _payloads("nobody")["heartbeat"],
            errors.NotFound,
            "agent 'nobody' is not registered",
        ),
        (
            "performance",
            _payloads("nobody")["performance"],
            errors.NotFound,
            "agent 'nobody' is not registered",
        ),
    ]
    for n, (kind, payload, problem, detail) in enumerate(cases):
        op_id = f"refused-{n}"
        outcome = await _write(db, ctx, kind, payload, op_id=op_id)
        assert isinstance(outcome.problem, problem), (kind, outcome)
        assert outcome.problem.detail == detail
        assert (outcome.status, outcome.applied, outcome.record) == (problem.status, False, None)
        assert outcome.reason == f"{problem.slug}: {detail}"
        assert orjson.loads(outcome.body) == {
            "type": outcome.problem.type,
            "title": problem.title,
            "status": problem.status,
            "detail": detail,
        }
        ledger = await db.fetchrow(
            "SELECT status, reason, response_status FROM operations "
            "WHERE tenant_id = $1 AND op_id = $2",
            ctx.tenant,
            op_id,
        )
        assert tuple(ledger) == ("rejected", outcome.reason, problem.status)
        audit = await db.fetchval(
            "SELECT outcome FROM audit_log WHERE tenant_id = $1 AND op_id = $2",
            ctx.tenant,
            op_id,
        )
        assert audit == f"rejected:{problem.slug}"
        replayed = await _write(db, ctx, kind, payload, op_id=op_id)
        assert replayed.from_ledger and not replayed.applied
        assert (replayed.status, replayed.reason) == (outcome.status, outcome.reason)
        assert orjson.loads(replayed.body) == orjson.loads(outcome.body)
    # Nothing refused changed anything.
    agent = await db.fetchrow(
        "SELECT name, revision, task_count FROM agents WHERE tenant_id = $1", ctx.tenant
    )
    assert tuple(agent) == ("Agent a1", 1, 0)


async def test_a_journaled_write_given_up_on_is_recorded_once(db: asyncpg.Connection) -> None:
    ctx = _ctx(_tenant())
    for reason in ("internal-error: first", "internal-error: second"):
        await repository.record_rejection(
            db, ctx, op_id="op-1", kind="load", req_hash="h", reason=reason
        )
    ledger = await db.fetch(
        "SELECT status, reason, response_status FROM operations WHERE tenant_id = $1", ctx.tenant
    )
    assert [tuple(r) for r in ledger] == [("rejected", "internal-error: first", 500)]
    audit = await db.fetch(
        "SELECT action, target, outcome, op_id FROM audit_log WHERE tenant_id = $1", ctx.tenant
    )
    assert [tuple(r) for r in audit] == [("load", None, "rejected:internal-error", "op-1")]


# ---- inside a caller's transaction -----------------------------------------------------------


async def test_a_write_that_fails_inside_a_transaction_leaves_the_others(
    db: asyncpg.Connection,
) -> None:
    ctx = _ctx(_tenant())
    async with db.transaction():
        await _write(db, ctx, "register", _payloads("a1")["register"])
        bad = {
            "agent_id": "a1",
            "body": {"active_tasks": -1, "queued_tasks": 0, "observed_at": _now()},
        }
        with pytest.raises(asyncpg.CheckViolationError):
            await _write(db, ctx, "load", bad, op_id="bad")
        await _write(db, ctx, "heartbeat", _payloads("a1")["heartbeat"])
    ops = await db.fetch(
        "SELECT kind FROM operations WHERE tenant_id = $1 ORDER BY created_at, kind", ctx.tenant
    )
    assert sorted(r["kind"] for r in ops) == ["heartbeat", "register"]


# ---- tenant isolation ------------------------------------------------------------------------


@pytest.fixture
async def app_role(migrated_dsn: str) -> str:
    role = f"app_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(migrated_dsn)
    try:
        await conn.execute(f"CREATE ROLE {role} LOGIN")
        await conn.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        await conn.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"
        )
        await conn.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}")
    finally:
        await conn.close()
    url = urlparse(migrated_dsn)
    return f"postgresql://{role}@{url.hostname}:{url.port}/postgres"


async def test_the_write_statement_keeps_the_row_level_security_wall(
    app_role: str, db: asyncpg.Connection
) -> None:
    mine, theirs = _tenant(), _tenant()
    assert (
        await db.fetchval(
            "SELECT count(*) FROM pg_proc WHERE proname IN ('registry_write', 'registry_write_v2') "
            "AND NOT prosecdef"
        )
        == 2
    ), "registry_write and registry_write_v2 must run with the caller's rights"
    # Their op id, already used: invisible to a connection that serves only `mine`.
    await _write(db, _ctx(theirs), "register", _payloads("t1")["register"], op_id="op-1")
    conn = await asyncpg.connect(app_role, server_settings=tenant_settings([mine]))
    try:
        ok = await _write(conn, _ctx(mine), "register", _payloads("m1")["register"], op_id="op-1")
        assert ok.applied and not ok.from_ledger
        counted = await _write(conn, _ctx(mine), "performance", _payloads("m1")["performance"])
        assert counted.status == 201
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await _write(conn, _ctx(theirs), "register", _payloads("m2")["register"])
        # Their agent is not there for this connection: not found, not changed.
        refused = await _write(conn, _ctx(mine), "heartbeat", _payloads("t1")["heartbeat"])
        assert isinstance(refused.problem, errors.NotFound)
    finally:
        await conn.close()
    assert await db.fetchval("SELECT count(*) FROM agents WHERE tenant_id = $1", theirs) == 1
    assert await db.fetchval("SELECT count(*) FROM operations WHERE tenant_id = $1", theirs) == 1
