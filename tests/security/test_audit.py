"""The audit log: one correct row per write and per admin action, also for journaled writes.

A row says who (the token's id, never the token), in which tenant, did what (the write kind, or
`admin:breaker.<state>`), to which target, with which outcome (`applied` or `rejected:<slug>`),
under which request id (the X-Request-ID the caller sent) and when. It is committed in the same
transaction as the write and its ledger entry, so its op id is always in `operations`. Reads,
refused requests (401, 403, 422) and idempotent replays of a write add nothing.
`GET /v1/audit` (admins only) shows the tenant's rows with filters and keyset paging.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from proxy.http import keys
from tests.conftest import Api, AppFactory, Tokens, agent_body, app_of, eventually
from tests.security import MoreTokens, assert_problem, more_tokens, sha256

COLUMNS = "id, tenant_id, actor, action, target, outcome, request_id, op_id, at"


def rid(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


async def audit_rows(db: asyncpg.Connection, tenant: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        f"SELECT {COLUMNS} FROM audit_log WHERE tenant_id = $1 ORDER BY id", tenant
    )
    return [dict(r) for r in rows]


async def db_now(db: asyncpg.Connection) -> datetime:
    value = await db.fetchval("SELECT clock_timestamp()")
    assert isinstance(value, datetime)
    return value


def assert_no_secret(more: MoreTokens, *texts: str) -> None:
    for text in texts:
        for secret in more.all_secrets():
            assert secret not in text
            assert sha256(secret) not in text


def as_entry(row: dict[str, Any]) -> dict[str, Any]:
    """A SQL row as `GET /v1/audit` shows it."""
    out = {k: v for k, v in row.items() if k != "tenant_id"}
    out["at"] = row["at"].isoformat()
    return out


def entries_equal(api_entries: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    got = [{**e, "at": datetime.fromisoformat(e["at"]).isoformat()} for e in api_entries]
    assert got == [as_entry(r) for r in rows]


async def get_audit(api: Api, token: str, **params: Any) -> tuple[int, Any]:
    status, body, _ = await api.as_token(token).call(
        "GET", "/v1/audit", params={k: str(v) for k, v in params.items()}
    )
    return status, body


# ---- one row per write -----------------------------------------------------------------------


async def test_every_write_and_admin_action_has_exactly_one_correct_row(
    make_api: AppFactory, tokens: Tokens, db: asyncpg.Connection
) -> None:
    api = await make_api()
    more = more_tokens(tokens)
    more.install(api)
    t, anon_id = tokens.tenant, sha256(more.anonymous_writer)[:12]
    perf = {"success": True, "quality_score": 0.5, "latency_ms": 2.0}
    load = {"active_tasks": 2, "queued_tasks": 0, "observed_at": datetime.now(UTC).isoformat()}
    # token, actor, method, path, body, headers, status, action, target, outcome
    writes: list[tuple[Any, ...]] = [
        (tokens.writer, "writer", "POST", "/v1/agents", agent_body("au-1"), {}, 201,
         "register", "au-1", "applied"),
        (tokens.writer, "writer", "POST", "/v1/agents", agent_body("au-1"), {}, 409,
         "register", "au-1", "rejected:duplicate-agent"),
        (tokens.admin, "admin", "PATCH", "/v1/agents/au-1", {"name": "renamed"},
         {"Idempotency-Key": "patch-key-1"}, 200, "patch", "au-1", "applied"),
        (tokens.writer, "writer", "PATCH", "/v1/agents/au-1", {"name": "stale"},
         {"If-Match": '"1"'}, 412, "patch", "au-1", "rejected:precondition-failed"),
        (more.hashed_writer, "hashed-writer", "PUT", "/v1/agents/au-1/load", load, {}, 200,
         "load", "au-1", "applied"),
        (more.anonymous_writer, anon_id, "POST", "/v1/agents/au-1/heartbeat", None, {}, 200,
         "heartbeat", "au-1", "applied"),
        (tokens.writer, "writer", "POST", "/v1/agents/au-1/performance", perf, {}, 201,
         "performance", "au-1", "applied"),
        (tokens.writer, "writer", "POST", "/v1/agents/ghost/performance", perf, {}, 404,
         "performance", "ghost", "rejected:not-found"),
        (tokens.writer, "writer", "DELETE", "/v1/agents/au-1", None, {}, 204,
         "unregister", "au-1", "applied"),
        (tokens.writer, "writer", "DELETE", "/v1/agents/au-1", None, {}, 204,
         "unregister", "au-1", "applied"),
        (tokens.admin, "admin", "POST", "/v1/admin/breaker", {"state": "disabled"}, {}, 200,
         "admin:breaker.disabled", "breaker:postgres", "applied"),
        (tokens.admin, "admin", "POST", "/v1/admin/breaker", {"state": "automatic"}, {}, 200,
         "admin:breaker.automatic", "breaker:postgres", "applied"),
    ]  # fmt: skip
    expected_rows = []
    for token, actor, method, path, body, headers, status, action, target, outcome in writes:
        request_id = rid(action.replace(":", "-"))
        before_rows = await audit_rows(db, t)
        started = await db_now(db)
        got, answer, _ = await api.as_token(token).call(
            method, path, body, {**headers, "X-Request-ID": request_id}
        )
        finished = await db_now(db)
        assert got == status, (method, path, answer)
        new = (await audit_rows(db, t))[len(before_rows) :]
        assert len(new) == 1, (method, path, new)
        row = new[0]
        assert row["tenant_id"] == t
        assert row["actor"] == actor
        assert (row["action"], row["target"], row["outcome"]) == (action, target, outcome)
        assert row["request_id"] == request_id
        assert started <= row["at"] <= finished, (started, row["at"], finished)
        if "Idempotency-Key" in headers:
            assert row["op_id"] == headers["Idempotency-Key"]
        ledger = await db.fetchrow(
            "SELECT kind, status FROM operations WHERE tenant_id = $1 AND op_id = $2",
            t,
            row["op_id"],
        )
        assert ledger is not None, row
        assert ledger["status"] == ("applied" if outcome == "applied" else "rejected")
        expected_rows.append(row)

    # Nothing else writes a row: reads, refusals, an idempotent replay of a write.
    before_rows = await audit_rows(db, t)
    quiet = [
        (tokens.reader, "GET", "/v1/agents?task_type=code", None, {}),
        (tokens.reader, "GET", "/v1/stats", None, {}),
        (tokens.admin, "GET", "/v1/audit", None, {}),
        (tokens.reader, "POST", "/v1/agents", agent_body("au-2"), {}),  # 403
        (tokens.writer, "POST", "/v1/admin/breaker", {"state": "disabled"}, {}),  # 403
        ("not-a-token-" + uuid.uuid4().hex, "POST", "/v1/agents", agent_body("au-3"), {}),
        (tokens.writer, "POST", "/v1/agents", {"agent_id": "au-4"}, {}),  # 422
        (tokens.admin, "POST", "/v1/admin/breaker", {"state": "sideways"}, {}),  # 422
        (tokens.admin, "PATCH", "/v1/agents/au-1", {"name": "renamed"},
         {"Idempotency-Key": "patch-key-1"}),  # replayed from the ledger
    ]  # fmt: skip
    for token, method, path, body, headers in quiet:
        status, answer, _ = await api.as_token(token).call(method, path, body, headers)
        assert status in (200, 401, 403, 422), (method, path, status, answer)
    assert await audit_rows(db, t) == before_rows
    assert app_of(api)[keys.SERVICE].breaker.state.value == "closed"

    # The API shows the same rows; no row of any tenant holds a token or its digest.
    status, body = await get_audit(api, tokens.admin, limit=1000)
    assert status == 200 and body["next_after_id"] is None
    entries_equal(body["entries"], before_rows)
    assert [r["id"] for r in expected_rows] == [e["id"] for e in body["entries"]]
    every = await db.fetch(
        "SELECT * FROM audit_log WHERE tenant_id = ANY($1::text[])",
        [t, tokens.other_tenant],
    )
    ledger = await db.fetch(
        "SELECT * FROM operations WHERE tenant_id = ANY($1::text[])", [t, tokens.other_tenant]
    )
    assert_no_secret(more, *(str(dict(r)) for r in [*every, *ledger]))


# ---- journaled writes ------------------------------------------------------------------------


async def _journaled_scenario(
    api: Api, tokens: Tokens, db: asyncpg.Connection
) -> tuple[dict[str, dict[str, Any]], datetime]:
    """Force the breaker open, write, return it to automatic, wait for the replay.

    Returns the expected audit row per request id, and PostgreSQL's clock just before the
    breaker was returned to automatic (every journaled request happened before it)."""
    admin, writer = api.as_token(tokens.admin), api.as_token(tokens.writer)
    t = tokens.tenant
    ids = {k: rid(k) for k in ("open", "reg", "perf", "ghost", "auto")}
    status, body, headers = await admin.call(
        "POST", "/v1/admin/breaker", {"state": "forced_open"}, {"X-Request-ID": ids["open"]}
    )
    assert status == 200 and body["state"] == "forced_open", body
    assert headers["X-Registry-Source"] == "journal"

    status, reg, _ = await writer.call(
        "POST", "/v1/agents", agent_body("jr-1"), {"X-Request-ID": ids["reg"]}
    )
    assert status == 202, reg
    status, perf, _ = await writer.call(
        "POST",
        "/v1/agents/jr-1/performance",
        {"event_id": "jr-ev", "success": True, "quality_score": 1.0, "latency_ms": 1.0},
        {"X-Request-ID": ids["perf"]},
    )
    assert status == 202, perf
    status, ghost, _ = await writer.call(
        "PATCH", "/v1/agents/ghost", {"name": "nobody"}, {"X-Request-ID": ids["ghost"]}
    )
    assert status == 202, ghost
    status, _, _ = await api.as_token(tokens.reader).call("POST", "/v1/agents", agent_body("x"))
    assert status == 403
    # Nothing reached PostgreSQL yet.
    assert [r for r in await audit_rows(db, t) if r["request_id"] in ids.values()] == []

    before_automatic = await db_now(db)
    status, body, _ = await admin.call(
        "POST", "/v1/admin/breaker", {"state": "automatic"}, {"X-Request-ID": ids["auto"]}
    )
    assert status == 200, body

    async def applied() -> bool:
        _, st, _ = await api.call("GET", "/v1/status")
        done = await db.fetchval(
            "SELECT count(*) FROM operations WHERE tenant_id = $1 AND op_id = ANY($2::text[])",
            t,
            [reg["op_id"], perf["op_id"], ghost["op_id"]],
        )
        return bool(st["journal"]["depth"] == 0 and done == 3)

    await eventually(applied, timeout=20, message="journal replayed")
    breaker = "breaker:postgres"
    expected = {
        ids["open"]: dict(actor="admin", action="admin:breaker.forced_open", target=breaker,
                          outcome="applied"),
        ids["reg"]: dict(actor="writer", action="register", target="jr-1", outcome="applied",
                         op_id=reg["op_id"]),
        ids["perf"]: dict(actor="writer", action="performance", target="jr-1",
                          outcome="applied", op_id=perf["op_id"]),
        ids["ghost"]: dict(actor="writer", action="patch", target="ghost",
                           outcome="rejected:not-found", op_id=ghost["op_id"]),
        ids["auto"]: dict(actor="admin", action="admin:breaker.automatic", target=breaker,
                          outcome="applied"),
    }  # fmt: skip
    return expected, before_automatic


async def test_writes_replayed_from_the_journal_have_one_correct_row(
    make_api: AppFactory, tokens: Tokens, db: asyncpg.Connection, tmp_path: Path
) -> None:
    api = await make_api()
    expected, _ = await _journaled_scenario(api, tokens, db)
    rows = await audit_rows(db, tokens.tenant)
    by_request = {r["request_id"]: r for r in rows}
    assert len(rows) == len(by_request), "a request id has more than one row"
    for request_id, fields in expected.items():
        row = by_request.get(request_id)
        assert row is not None, (request_id, rows)
        for key, value in fields.items():
            assert row[key] == value, (request_id, key, row)
        assert row["tenant_id"] == tokens.tenant
    assert len(rows) == len(expected)

    ghost_op = next(v["op_id"] for v in expected.values() if v["target"] == "ghost")
    status, op, _ = await api.call("GET", f"/v1/operations/{ghost_op}")
    assert status == 200 and op["status"] == "rejected" and op["reason"], op

    # The API tells the same story.
    status, body = await get_audit(api, tokens.admin, target="jr-1")
    assert status == 200
    assert [e["request_id"] for e in body["entries"]] == [
        r["request_id"] for r in rows if r["target"] == "jr-1"
    ]
    status, body = await get_audit(api, tokens.admin, limit=1000)
    entries_equal(body["entries"], rows)

    # The journal on disk names actors by id too.
    more = more_tokens(tokens)
    for path in (tmp_path / "journal").rglob("*"):
        if path.is_file():
            assert_no_secret(more, path.read_bytes().decode("utf-8", "replace"))
            for secret in (tokens.reader, tokens.writer, tokens.admin, tokens.other_writer):
                assert secret.encode() not in path.read_bytes()


async def test_a_journaled_write_is_audited_at_the_time_it_was_made(
    make_api: AppFactory, tokens: Tokens, db: asyncpg.Connection
) -> None:
    api = await make_api()
    expected, before_automatic = await _journaled_scenario(api, tokens, db)
    rows = {r["request_id"]: r for r in await audit_rows(db, tokens.tenant)}
    for request_id, fields in expected.items():
        if fields["action"] != "admin:breaker.automatic":
            assert rows[request_id]["at"] <= before_automatic, (request_id, rows[request_id])


# ---- GET /v1/audit ---------------------------------------------------------------------------


async def test_audit_filters_and_paging(
    make_api: AppFactory, tokens: Tokens, db: asyncpg.Connection
) -> None:
    api = await make_api()
    more = more_tokens(tokens)
    more.install(api)
    admin, anon_id = tokens.admin, sha256(more.anonymous_writer)[:12]
    for i in range(5):
        status, _, _ = await api.call("POST", "/v1/agents", agent_body(f"f-{i}"))
        assert status == 201
    assert (await api.as_token(admin).call("PATCH", "/v1/agents/f-2", {"name": "x"}))[0] == 200
    for _ in range(2):
        status, _, _ = await api.as_token(admin).call(
            "POST", "/v1/admin/breaker", {"state": "automatic"}
        )
        assert status == 200
    assert (await api.as_token(more.anonymous_writer).call(
        "POST", "/v1/agents/f-1/heartbeat"))[0] == 200  # fmt: skip
    # Rows of the other tenant must never show up.
    status, _, _ = await api.as_token(tokens.other_writer).call(
        "POST", "/v1/agents", agent_body("f-2")
    )
    assert status == 201

    rows = await audit_rows(db, tokens.tenant)
    assert len(rows) == 9
    status, body = await get_audit(api, admin)
    assert status == 200 and body["next_after_id"] is None
    entries_equal(body["entries"], rows)
    pivot = rows[4]["at"]

    cases: list[tuple[dict[str, Any], list[dict[str, Any]]]] = [
        ({"actor": "writer"}, [r for r in rows if r["actor"] == "writer"]),
        ({"actor": "admin"}, [r for r in rows if r["actor"] == "admin"]),
        ({"actor": anon_id}, [r for r in rows if r["actor"] == anon_id]),
        ({"actor": "other-writer"}, []),
        ({"action": "register"}, [r for r in rows if r["action"] == "register"]),
        ({"action": "admin:breaker.automatic"}, [r for r in rows if r["action"].startswith("ad")]),
        ({"target": "f-2"}, [r for r in rows if r["target"] == "f-2"]),
        ({"target": "breaker:postgres"}, [r for r in rows if r["target"] == "breaker:postgres"]),
        (
            {"actor": "writer", "action": "register", "target": "f-3"},
            [r for r in rows if r["target"] == "f-3"],
        ),
        ({"since": pivot.isoformat()}, [r for r in rows if r["at"] >= pivot]),
        ({"until": pivot.isoformat()}, [r for r in rows if r["at"] < pivot]),
        (
            {"since": rows[1]["at"].isoformat(), "until": rows[6]["at"].isoformat()},
            [r for r in rows if rows[1]["at"] <= r["at"] < rows[6]["at"]],
        ),
        ({"since": (datetime.now(UTC) + timedelta(days=1)).isoformat()}, []),
        ({"until": "2001-01-01T00:00:00+00:00"}, []),
        (
            {"since": pivot.astimezone(UTC).replace(tzinfo=None).isoformat() + "-00:00"},
            [r for r in rows if r["at"] >= pivot],
        ),
        ({"after_id": rows[3]["id"]}, rows[4:]),
        ({"after_id": rows[3]["id"], "limit": 2}, rows[4:6]),
        ({"after_id": 2**63 - 1}, []),
        ({"actor": "' OR 1=1 --"}, []),
        ({"target": "f-2' OR 'a'='a"}, []),
    ]
    for params, expected in cases:
        status, body = await get_audit(api, admin, **params)
        assert status == 200, (params, body)
        entries_equal(body["entries"], expected)

    # Keyset paging: follow next_after_id until it is null.
    for limit in (1, 2, 4, 9, 10):
        pages, after, seen = 0, 0, []
        while True:
            status, body = await get_audit(api, admin, limit=limit, after_id=after)
            assert status == 200, body
            assert len(body["entries"]) <= limit
            seen += body["entries"]
            pages += 1
            if body["next_after_id"] is None:
                break
            assert body["next_after_id"] == body["entries"][-1]["id"]
            after = body["next_after_id"]
            assert pages <= 20
        entries_equal(seen, rows)
        assert pages in (len(rows) // limit + 1, -(-len(rows) // limit)), (limit, pages)

    # Bad parameters are 422 problems, and nothing is written.
    for query in (
        "limit=0",
        "limit=1001",
        "limit=x",
        "after_id=-1",
        "after_id=9223372036854775808",
        "since=2024-01-01T00:00:00",  # no time zone
        "since=yesterday",
        "until=2024-13-01T00:00:00Z",
        "tenant_id=" + tokens.other_tenant,
        "actor=a&actor=b",
        "limit=1&limit=2",
        "actor=" + "a" * 129,
    ):
        status, body, headers = await api.as_token(admin).call("GET", f"/v1/audit?{query}")
        assert status == 422, (query, body)
        assert headers["Content-Type"].startswith("application/problem+json")
    assert await audit_rows(db, tokens.tenant) == rows


async def test_only_an_admin_of_the_tenant_reads_its_audit_log(
    make_api: AppFactory, tokens: Tokens, db: asyncpg.Connection
) -> None:
    api = await make_api()
    more = more_tokens(tokens)
    more.install(api)
    request_id = rid("mine")
    status, _, _ = await api.call(
        "POST", "/v1/agents", agent_body("secret-agent"), {"X-Request-ID": request_id}
    )
    assert status == 201
    for token in (tokens.reader, tokens.writer, more.hashed_writer, tokens.other_writer):
        resp = await api.client.get("/v1/audit", headers={"Authorization": f"Bearer {token}"})
        raw = await resp.read()
        assert resp.status == 403, raw
        assert_problem(resp.status, raw, resp.headers)
    resp = await api.client.get("/v1/audit")
    assert resp.status == 401
    assert_problem(resp.status, await resp.read(), resp.headers)

    # Another tenant's admin sees its own rows only, whatever the filters say.
    other_admin = more.other_admin
    status, _, _ = await api.as_token(other_admin).call(
        "POST", "/v1/admin/breaker", {"state": "automatic"}
    )
    assert status == 200
    for params in ({}, {"actor": "writer"}, {"target": "secret-agent"}, {"after_id": 0}):
        status, body = await get_audit(api, other_admin, **params)
        assert status == 200, body
        assert all(e["actor"] == "other-admin" for e in body["entries"]), body
        assert request_id not in str(body)
        assert "secret-agent" not in str(body)
    status, body = await get_audit(api, other_admin)
    assert [e["action"] for e in body["entries"]] == ["admin:breaker.automatic"]
    assert app_of(api)[keys.SERVICE].breaker.state.value == "closed"
