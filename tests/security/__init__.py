"""Security tests: roles and tenants, hostile input, audit, rate limit, secrets, reload, binding.

The helpers here are shared by the modules of this package: a picture of everything PostgreSQL
holds for a tenant (to prove a refused request changed nothing), the problem document check, a
raw HTTP/1.1 client (to send bytes no well-behaved client library would), and a token list with
a second tenant's admin and reader, a token without an id and one stored only as its digest.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from proxy.http import keys
from proxy.http.auth import TokenStore
from tests.conftest import Api, Tokens, app_of

PROBLEM_BASE = "https://registry-proxy.dev/problems/"
# Domain rejections of a well-formed write: no effect, but one `rejected` ledger row and one
# audit row (proxy/store/repository/ledger.py, execute_write), so the attempt leaves a trace.
DOMAIN_REJECTIONS = frozenset(
    {"not-found", "duplicate-agent", "registry-full", "precondition-failed"}
)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ---- what PostgreSQL holds -------------------------------------------------------------------


async def picture(db: asyncpg.Connection, tenant: str) -> dict[str, Any]:
    """Every row of `tenant` in the four tables (and its capacity counter), comparable with ==."""
    agents = await db.fetch("SELECT * FROM agents WHERE tenant_id = $1 ORDER BY agent_id", tenant)
    events = await db.fetch(
        "SELECT * FROM performance_events WHERE tenant_id = $1 ORDER BY event_id", tenant
    )
    ops = await db.fetch(
        "SELECT op_id, kind, status, reason FROM operations WHERE tenant_id = $1 ORDER BY op_id",
        tenant,
    )
    audit = await db.fetch(
        "SELECT id, actor, action, target, outcome, request_id, op_id FROM audit_log "
        "WHERE tenant_id = $1 ORDER BY id",
        tenant,
    )
    return {
        "agents": [dict(r) for r in agents],
        "performance_events": [dict(r) for r in events],
        "operations": [dict(r) for r in ops],
        "audit_log": [dict(r) for r in audit],
        "agent_count": await db.fetchval(
            "SELECT agent_count FROM tenants WHERE tenant_id = $1", tenant
        ),
    }


async def pictures(db: asyncpg.Connection, *tenants: str) -> dict[str, dict[str, Any]]:
    return {t: await picture(db, t) for t in tenants}


def counts(pic: dict[str, Any]) -> dict[str, int]:
    return {k: len(v) for k, v in pic.items() if isinstance(v, list)}


def assert_only_rejection_recorded(
    before: dict[str, Any], after: dict[str, Any], *, actor: str, slug: str
) -> None:
    """A domain rejection: the registry is untouched; one rejected ledger row and audit row."""
    for key in ("agents", "performance_events", "agent_count"):
        assert after[key] == before[key], key
    new_ops = [r for r in after["operations"] if r not in before["operations"]]
    new_audit = after["audit_log"][len(before["audit_log"]) :]
    assert after["audit_log"][: len(before["audit_log"])] == before["audit_log"]
    assert len(new_ops) == 1 and len(after["operations"]) == len(before["operations"]) + 1
    assert new_ops[0]["status"] == "rejected", new_ops
    assert len(new_audit) == 1, new_audit
    assert new_audit[0]["actor"] == actor
    assert new_audit[0]["outcome"] == f"rejected:{slug}", new_audit


# ---- answers ---------------------------------------------------------------------------------


def assert_problem(status: int, raw: bytes, headers: Any) -> dict[str, Any]:
    """A 4xx RFC 9457 problem document, without a trace of the implementation."""
    text = raw.decode("utf-8", "replace")
    assert 400 <= status < 500, (status, text)
    ctype = headers.get("Content-Type", "")
    assert ctype.startswith("application/problem+json"), (status, ctype, text)
    assert "Traceback" not in text and 'File "' not in text, text
    body = orjson.loads(raw)
    assert body["status"] == status, body
    for key in ("type", "title", "detail"):
        assert isinstance(body[key], str) and body[key], body
    assert body["type"].startswith(PROBLEM_BASE), body
    return body  # type: ignore[no-any-return]


def problem_slug(body: dict[str, Any]) -> str:
    return str(body["type"]).removeprefix(PROBLEM_BASE)


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


async def send_raw(
    api: Api,
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
    *,
    timeout: float = 10.0,
) -> RawAnswer:
    """One HTTP/1.1 request written byte for byte on a fresh connection."""
    host, port = api.client.host, api.client.port
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: " + host.encode()]
    lines += [name + b": " + value for name, value in headers]
    if body or method in (b"POST", b"PUT", b"PATCH"):
        lines.append(b"Content-Length: " + str(len(body)).encode())
    lines.append(b"Connection: close")
    payload = b"\r\n".join(lines) + b"\r\n\r\n" + body
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(payload)
        await writer.drain()
        async with asyncio.timeout(timeout):
            data = await reader.read()
    finally:
        writer.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().title()] = value.strip()
    return RawAnswer(int(status_line.split(" ")[1]), parsed, rest)


# ---- tokens ----------------------------------------------------------------------------------


@dataclass
class MoreTokens:
    """The conftest tokens plus a second tenant's admin and reader, a writer of the first
    tenant without an `id` (so its id is a digest prefix), and a writer of the first tenant
    whose secret is configured only as `token_sha256`."""

    base: Tokens
    other_admin: str
    other_reader: str
    anonymous_writer: str
    hashed_writer: str

    def spec(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = orjson.loads(self.base.spec())
        t, o = self.base.tenant, self.base.other_tenant
        entries += [
            {"token": self.other_admin, "tenant": o, "role": "admin", "id": "other-admin"},
            {"token": self.other_reader, "tenant": o, "role": "reader", "id": "other-reader"},
            {"token": self.anonymous_writer, "tenant": t, "role": "writer"},
            {
                "token_sha256": sha256(self.hashed_writer),
                "tenant": t,
                "role": "writer",
                "id": "hashed-writer",
            },
        ]
        return entries

    def json(self) -> str:
        return orjson.dumps(self.spec()).decode()

    def install(self, api: Api) -> None:
        """Serve this list instead of the conftest one (the swap SIGHUP does); both tenants are
        in the conftest list already, so the replica knows them."""
        app_of(api)[keys.TOKENS].replace_with(TokenStore.from_json(self.json()))

    def all_secrets(self) -> list[str]:
        b = self.base
        return [
            b.reader,
            b.writer,
            b.admin,
            b.other_writer,
            self.other_admin,
            self.other_reader,
            self.anonymous_writer,
            self.hashed_writer,
        ]


def more_tokens(base: Tokens) -> MoreTokens:
    return MoreTokens(
        base=base,
        other_admin="oadmin-" + uuid.uuid4().hex,
        other_reader="oreader-" + uuid.uuid4().hex,
        anonymous_writer="anon-" + uuid.uuid4().hex,
        hashed_writer="hashed-" + uuid.uuid4().hex,
    )
