"""Hostile bodies, ids, query strings and headers on every endpoint (property-based).

Each example is one request written byte for byte on a real connection to the sidecar. Whatever
it holds, the answer is never a 5xx; a refusal is a 4xx problem document and PostgreSQL is exactly
as it was (every row of both tenants), except that a domain rejection of a well-formed write
(unknown agent, stale If-Match, duplicate) leaves its one `rejected` ledger and audit row.
What validation accepts (names, capability values built from SQL fragments and unicode oddities)
is stored and returned verbatim, through the API and in PostgreSQL.

One app per test function serves all of its examples; example counts keep the file well under a
minute.
"""

from __future__ import annotations

import gzip
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from proxy.http import keys
from proxy.http.routes import ROUTES, Route
from proxy.registry.models import ID_PATTERN
from tests.conftest import Api, Tokens, agent_body, app_of
from tests.security import (
    DOMAIN_REJECTIONS,
    RawAnswer,
    assert_only_rejection_recorded,
    assert_problem,
    pictures,
    problem_slug,
    send_raw,
)

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)

SQL = [
    "'; DROP TABLE agents; --",
    "x'); DELETE FROM audit_log; --",
    '" OR "1"="1',
    "' OR 1=1 --",
    "1; SELECT pg_sleep(5)",
    "$1",
    "%s%s%s",
    "$$; TRUNCATE operations; $$",
    "*/ UNION SELECT tenant_id FROM agents /*",
    "'||(SELECT current_user)||'",
    "\\'; COPY agents TO '/tmp/x'; --",
    '{"$ne": null}',
    "../../../etc/passwd",
    "${jndi:ldap://127.0.0.1/a}",
    "{{7*7}}",
    "<script>alert(1)</script>",
]
ODD = [
    "\x00",
    "a\x00b",
    "\u202e",  # right-to-left override
    "\u200f",  # right-to-left mark
    "\u200b",  # zero-width space
    "\u200d",  # zero-width joiner
    "\ufeff",  # byte order mark
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # family emoji, joined by ZWJ
    "\U0001f980",
    "e\u0301",
    "\u0301",
    "\ufdfa",
    "\U0001d54f",
    "\uffff",
    "\U0010ffff",
    "\ud800",  # lone surrogates: escaped in JSON as \ud800
    "a\udfffb",
    " lead",
    "trail ",
    "\t",
    "\r\n",
    "\x7f",
    "\x1b[31m",
    "\u2028",
    "\xa0",
    "%00",
    "%2F",
    "שלום",
    "مرحبا",
]
FIELDS = [
    "agent_id",
    "name",
    "model_family",
    "capabilities",
    "task_types",
    "languages",
    "specializations",
    "max_concurrent_tasks",
    "active_tasks",
    "queued_tasks",
    "observed_at",
    "event_id",
    "success",
    "quality_score",
    "latency_ms",
    "task_type",
    "state",
    "reason",
    "tenant_id",
    "version",
    "__proto__",
]

pieces = st.sampled_from(SQL + ODD)
hostile_text = st.one_of(
    pieces,
    st.text(max_size=30),
    st.lists(st.one_of(pieces, st.text(max_size=8)), min_size=1, max_size=4).map("".join),
    st.integers(129, 5_000).map(lambda n: "y" * n),
)
huge_ints = st.one_of(
    st.sampled_from([2**31, 2**63 - 1, 2**63, 2**64, 10**30, -(2**63) - 1, -1, 0, 10**400]),
    st.integers(),
)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 5e-324, -0.0, 1e-400]),
)
scalars = st.one_of(st.none(), st.booleans(), huge_ints, floats, hostile_text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELDS), hostile_text), inner, max_size=4),
    ),
    max_leaves=12,
)


def to_json(value: Any, ascii_only: bool) -> bytes:
    """JSON as a careless client writes it: NaN, 10**400, lone surrogates and all."""
    return json.dumps(value, ensure_ascii=ascii_only, allow_nan=True).encode(
        "utf-8", "surrogatepass"
    )


def nested(depth: int, as_object: bool) -> bytes:
    if as_object:
        return b'{"capabilities":' * depth + b"1" + b"}" * depth
    return b"[" * depth + b"]" * depth


def _now() -> str:
    return datetime.now(UTC).isoformat()


# A valid body per endpoint; the fuzzer keeps, drops or replaces each field.
TEMPLATES: dict[str, dict[str, Any]] = {
    "register": agent_body("fz-new"),
    "patch_agent": {"name": "n", "max_concurrent_tasks": 3, "capabilities": {"task_types": ["a"]}},
    "put_load": {"active_tasks": 1, "queued_tasks": 1, "observed_at": "2030-01-01T00:00:00Z"},
    "heartbeat": {"observed_at": "2030-01-01T00:00:00Z"},
    "post_performance": {"success": True, "quality_score": 0.5, "latency_ms": 1.0},
    "admin_breaker": {"state": "automatic", "reason": "fuzz"},
}
BODY_ROUTES = [r for r in ROUTES if r.name in TEMPLATES]
PROTECTED = [r for r in ROUTES if r.role is not None]
ID_ROUTES = [r for r in ROUTES if "{" in r.path]


def mutated(template: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    def field(value: Any) -> st.SearchStrategy[Any]:
        if isinstance(value, dict):
            return st.one_of(mutated(value), json_values)
        return st.one_of(st.just(value), json_values)

    kept = st.fixed_dictionaries({}, optional={k: field(v) for k, v in template.items()})
    extra = st.dictionaries(
        st.one_of(st.sampled_from(FIELDS), hostile_text), json_values, max_size=1
    )
    return st.tuples(kept, extra).map(lambda kv: {**kv[1], **kv[0]})


def body_for(route: Route) -> st.SearchStrategy[bytes]:
    template = TEMPLATES[route.name]
    return st.one_of(
        st.tuples(st.one_of(json_values, mutated(template)), st.booleans()).map(
            lambda vb: to_json(*vb)
        ),
        st.tuples(st.integers(2, 3_000), st.booleans()).map(lambda nb: nested(*nb)),
        st.binary(max_size=200),
        st.just(b""),
        st.just(b"x" * 70_000),
    )


content_types = st.sampled_from(
    [
        b"application/json",
        b"application/json",
        b"application/json; charset=utf-8",
        b"application/json; charset=latin-1",
        b"text/plain",
        b"application/x-www-form-urlencoded",
        b"multipart/form-data; boundary=x",
        b"application/json-patch+json",
        b"",
        b"application/json\xff",
    ]
)


# ---- the one check every example makes ---------------------------------------------------


@dataclass
class Target:
    api: Api
    db: asyncpg.Connection
    tokens: Tokens
    token: str
    victim: str = "victim"

    @property
    def tenants(self) -> tuple[str, str]:
        return self.tokens.tenant, self.tokens.other_tenant

    def auth(self) -> tuple[bytes, bytes]:
        return b"Authorization", b"Bearer " + self.token.encode()

    async def ensure_victim(self) -> None:
        status, _, _ = await self.api.call("GET", f"/v1/agents/{self.victim}")
        if status == 404:
            status, body, _ = await self.api.call("POST", "/v1/agents", agent_body(self.victim))
            assert status == 201, body

    async def before(self) -> dict[str, Any]:
        assert app_of(self.api)[keys.SERVICE].breaker.state.value == "closed"
        return await pictures(self.db, *self.tenants)

    async def check(self, answer: RawAnswer, before: dict[str, Any], what: Any) -> None:
        assert answer.status < 500, (what, answer)
        assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", answer.headers.get("X-Request-Id", ""))
        after = await pictures(self.db, *self.tenants)
        own, other = self.tenants
        assert after[other] == before[other], (what, "the other tenant changed")
        if answer.status < 300:
            return  # the fuzzer wrote a valid request: accepted, and that is fine
        body = assert_problem(answer.status, answer.body, answer.headers)
        slug = problem_slug(body)
        if after != before:
            # Only a domain rejection of a well-formed write leaves a trace: its record.
            assert slug in DOMAIN_REJECTIONS, (what, answer.status, body)
            actor = "admin" if self.token == self.tokens.admin else "writer"
            assert_only_rejection_recorded(before[own], after[own], actor=actor, slug=slug)
        assert app_of(self.api)[keys.SERVICE].breaker.state.value == "closed"


@pytest.fixture
async def target(api: Api, db: asyncpg.Connection, tokens: Tokens) -> Target:
    t = Target(api, db, tokens, tokens.admin)
    await t.ensure_victim()
    return t


def path_of(route: Route, agent_id: str = "victim", op_id: str = "victim-op") -> bytes:
    return route.path.format(agent_id=agent_id, op_id=op_id).encode()


def valid_body(route: Route) -> bytes:
    if route.name == "register":
        return orjson.dumps(agent_body("fz-" + uuid.uuid4().hex[:12]))
    if route.name == "put_load":
        return orjson.dumps({**TEMPLATES["put_load"], "observed_at": _now()})
    template = TEMPLATES.get(route.name)
    return orjson.dumps(template) if template is not None else b""


# ---- bodies ----------------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
async def test_hostile_bodies_on_every_body_endpoint(target: Target, data: st.DataObject) -> None:
    route = data.draw(st.sampled_from(BODY_ROUTES), label="route")
    body = data.draw(body_for(route), label="body")
    ctype = data.draw(content_types, label="content-type")
    if route.name == "admin_breaker":
        try:
            state = orjson.loads(body).get("state")
        except (orjson.JSONDecodeError, AttributeError):
            state = None
        assume(state not in ("forced_open", "disabled"))  # a real admin action, not input
    await target.ensure_victim()
    before = await target.before()
    headers = [target.auth()]
    if ctype:
        headers.append((b"Content-Type", ctype))
    answer = await send_raw(target.api, route.method.encode(), path_of(route), headers, body)
    await target.check(answer, before, (route.name, body[:200], ctype))


# ---- ids in the path ---------------------------------------------------------------------


def encode_segment(text: str, raw: bool) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    if raw and re.fullmatch(rb"[A-Za-z0-9._~!$&'()*+,;=:@-]+", data):
        return data
    return quote(data, safe="").encode()


@FUZZ
@given(data=st.data())
async def test_hostile_ids_on_every_endpoint_with_an_id(
    target: Target, data: st.DataObject
) -> None:
    route = data.draw(st.sampled_from(ID_ROUTES), label="route")
    ident = data.draw(st.one_of(hostile_text, st.from_regex(ID_PATTERN)), label="id")
    assume(ident)
    segment = encode_segment(ident, data.draw(st.booleans(), label="raw"))
    assume(len(segment) < 7_000)  # longer request lines are framing errors, tested apart
    path = route.path.replace("{agent_id}", "\0").replace("{op_id}", "\0")
    target_path = path.encode().replace(b"\0", segment)
    await target.ensure_victim()
    before = await target.before()
    headers = [target.auth(), (b"Content-Type", b"application/json")]
    answer = await send_raw(
        target.api, route.method.encode(), target_path, headers, valid_body(route)
    )
    await target.check(answer, before, (route.name, target_path))
    if not re.fullmatch(ID_PATTERN, ident):
        assert answer.status in (404, 405, 422), (route.name, target_path, answer)


async def test_encoded_slashes_and_dot_segments_stay_inside_the_id(target: Target) -> None:
    before = await target.before()
    for method, target_path in [
        (b"PUT", b"/v1/agents/victim%2Fload"),
        (b"POST", b"/v1/agents/victim%2fheartbeat"),
        (b"DELETE", b"/v1/agents/victim%2F..%2F"),
        (b"GET", b"/v1/agents/%2e%2e"),
        (b"GET", b"/v1/agents/.."),
        (b"GET", b"/v1/operations/..%2F..%2Fstatus"),
        (b"PATCH", b"/v1/agents/victim%00"),
        (b"GET", b"/v1/agents/victim;tenant_id=other"),
    ]:
        answer = await send_raw(
            target.api,
            method,
            target_path,
            [target.auth(), (b"Content-Type", b"application/json")],
            orjson.dumps({"active_tasks": 1, "queued_tasks": 1, "observed_at": _now()}),
        )
        assert answer.status in (404, 405, 422), (target_path, answer)
        await target.check(answer, before, target_path)


# ---- query strings ---------------------------------------------------------------------------

QUERY_KEYS = [
    "task_type",
    "languages",
    "specializations",
    "max_utilization",
    "min_success_rate",
    "limit",
    "actor",
    "action",
    "target",
    "since",
    "until",
    "after_id",
    "tenant",
    "tenant_id",
]
query_values = st.one_of(
    hostile_text,
    st.sampled_from(
        [
            "nan",
            "-inf",
            "1e309",
            "-0",
            "0x10",
            "99999999999999999999999",
            "-9223372036854775809",
            "9223372036854775808",
            "1,2",
            ",,,",
            "0001-01-01T00:00:00+14:00",
            "9999-12-31T23:59:59-14:00",
            "2024-02-30T00:00:00Z",
            "2024-01-01",
            "2024-01-01T00:00:00",
            "now",
            "true",
            "",
        ]
    ),
    huge_ints.map(str),
    floats.map(repr),
)


def encode_query(pairs: list[tuple[str, str]], raw: bool) -> bytes:
    parts = []
    for key, value in pairs:
        k = encode_segment(key, raw) if key else b""
        v = encode_segment(value, raw) if value else b""
        parts.append(k + b"=" + v)
    return b"&".join(parts)


@FUZZ
@given(data=st.data())
async def test_hostile_query_strings_on_every_endpoint(target: Target, data: st.DataObject) -> None:
    route = data.draw(st.sampled_from(PROTECTED), label="route")
    pairs = data.draw(
        st.lists(
            st.tuples(st.one_of(st.sampled_from(QUERY_KEYS), hostile_text), query_values),
            min_size=1,
            max_size=5,
        ),
        label="query",
    )
    query = encode_query(pairs, data.draw(st.booleans(), label="raw"))
    assume(len(query) < 7_000)  # longer request lines are framing errors, tested apart
    if route.name == "admin_breaker":
        route = next(r for r in ROUTES if r.name == "audit")  # keep the breaker automatic
    await target.ensure_victim()
    before = await target.before()
    headers = [target.auth(), (b"Content-Type", b"application/json")]
    answer = await send_raw(
        target.api, route.method.encode(), path_of(route) + b"?" + query, headers, valid_body(route)
    )
    await target.check(answer, before, (route.name, query))


# ---- headers ---------------------------------------------------------------------------------

HEADERS = [
    b"Authorization",
    b"X-Request-ID",
    b"Idempotency-Key",
    b"If-Match",
    b"X-Request-Timeout",
    b"Content-Type",
    b"Accept",
    b"Accept-Encoding",
    b"Forwarded",
    b"X-Forwarded-For",
    b"X-Tenant",
    b"Cookie",
]
header_text = st.one_of(
    hostile_text,
    st.sampled_from(
        [
            "Bearer",
            "Bearer ",
            "Bearer '; DROP TABLE agents; --",
            "Basic YWRtaW46YWRtaW4=",
            '"1"',
            'W/"1"',
            "*",
            '"99999999999999999999"',
            "0",
            "-1",
            "99999999999999999999999",
            "1.5",
            "application/json; charset=\x00",
            "x" * 4_000,
        ]
    ),
)


def header_bytes(text: str) -> bytes:
    """A field value a parser accepts: no control bytes but tab (CR, LF, NUL, DEL are framing
    errors, tested apart) and no leading or trailing blanks; other bytes go as UTF-8."""
    data = text.encode("utf-8", "surrogatepass")
    data = bytes(b for b in data if (b >= 32 and b != 127) or b == 9)
    return data.strip(b" \t")


def _is_deadline(value: bytes) -> bool:
    """What the sidecar takes for a deadline: int() of the value (any digits int() knows)."""
    try:
        return int(value.decode("utf-8", "surrogateescape")) >= 1
    except ValueError:
        return False


@FUZZ
@given(data=st.data())
async def test_hostile_headers_on_every_endpoint(target: Target, data: st.DataObject) -> None:
    route = data.draw(st.sampled_from(PROTECTED), label="route")
    name = data.draw(st.sampled_from(HEADERS), label="header")
    value = header_bytes(data.draw(header_text, label="value"))
    if name == b"X-Request-Timeout":
        # A valid deadline is a caller's choice, not hostile input: a write may then time out.
        assume(not _is_deadline(value))
    if name == b"Authorization":
        # Not UTF-8 in the token is its own test below.
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            assume(False)
    if route.name == "admin_breaker":
        route = next(r for r in ROUTES if r.name == "status")
    await target.ensure_victim()
    before = await target.before()
    headers = [target.auth(), (b"Content-Type", b"application/json")]
    headers = [(n, v) for n, v in headers if n.lower() != name.lower()] + [(name, value)]
    answer = await send_raw(
        target.api, route.method.encode(), path_of(route), headers, valid_body(route)
    )
    await target.check(answer, before, (route.name, name, value[:100]))
    if name == b"Authorization":
        assert answer.status == 401, answer


async def test_authorization_that_is_not_utf8_is_401(target: Target) -> None:
    before = await target.before()
    for value in (
        b"Bearer \xff\xfe",
        b"Bearer " + target.token.encode() + b"\xff",
        b"\xffBearer x",
    ):
        answer = await send_raw(target.api, b"GET", b"/v1/stats", [(b"Authorization", value)])
        await target.check(answer, before, value)
        assert answer.status == 401, answer


async def test_undecodable_content_encoding_is_a_4xx_problem(target: Target) -> None:
    before = await target.before()
    for encoding in (b"gzip", b"deflate"):
        answer = await send_raw(
            target.api,
            b"POST",
            b"/v1/agents/victim/heartbeat",
            [
                target.auth(),
                (b"Content-Type", b"application/json"),
                (b"Content-Encoding", encoding),
            ],
            b"this is not compressed",
        )
        await target.check(answer, before, encoding)


async def test_compressed_body_bomb_is_413(target: Target) -> None:
    before = await target.before()
    bomb = gzip.compress(b" " * 50_000_000)
    answer = await send_raw(
        target.api,
        b"POST",
        b"/v1/agents/victim/heartbeat",
        [target.auth(), (b"Content-Type", b"application/json"), (b"Content-Encoding", b"gzip")],
        bomb,
    )
    assert answer.status == 413, answer
    await target.check(answer, before, "bomb")


# ---- HTTP framing errors ---------------------------------------------------------------------

FRAMING = [
    pytest.param([(b"X-Big", b"a" * 9_000)], id="header-too-long"),
    pytest.param([(b"X-A\x00", b"b")], id="nul-in-name"),
    pytest.param([(b"X-A", b"b\x00c")], id="nul-in-value"),
    pytest.param([(b"X-A", b"b\rc")], id="bare-cr"),
    pytest.param([(b"Bad Header", b"x")], id="space-in-name"),
    pytest.param([(b"X-A", b"x"), (b" folded", b"y")], id="obs-fold"),
    pytest.param([(b"Transfer-Encoding", b"chunked, gzip")], id="bad-transfer-encoding"),
    pytest.param([(b"Content-Length", b"-1")], id="negative-length"),
]


@pytest.mark.parametrize("extra", FRAMING)
async def test_http_framing_errors_are_4xx_and_the_sidecar_keeps_serving(
    target: Target, extra: list[tuple[bytes, bytes]]
) -> None:
    before = await target.before()
    answer = await send_raw(target.api, b"GET", b"/v1/stats", [target.auth(), *extra])
    assert 400 <= answer.status < 500, answer
    assert await pictures(target.db, *target.tenants) == before
    status, _, _ = await target.api.call("GET", "/v1/stats")
    assert status == 200


async def test_http_framing_errors_are_problem_documents(target: Target) -> None:
    answer = await send_raw(
        target.api, b"GET", b"/v1/stats", [target.auth(), (b"X-Big", b"a" * 9_000)]
    )
    assert_problem(answer.status, answer.body, answer.headers)
    assert "X-Request-Id" in answer.headers


# ---- what validation accepts is stored verbatim ----------------------------------------------

_accepted_piece = st.one_of(
    st.sampled_from(SQL),
    st.sampled_from(["\U0001f980", "e\u0301", "\u0301x", "\ufdfa", "\U0001d54f", "שלום", "مرحبا"]),
    st.text(st.characters(exclude_categories=["C", "Z"]), min_size=1, max_size=8),
)


def _accepted(max_len: int, commas: bool) -> st.SearchStrategy[str]:
    def ok(s: str) -> bool:
        return (
            0 < len(s) <= max_len
            and s.isprintable()
            and s == s.strip()
            and (commas or "," not in s)
        )

    joined = st.lists(_accepted_piece, min_size=1, max_size=3).map(" ".join)
    return joined.map(lambda s: s[:max_len].strip()).filter(ok)


names = _accepted(200, commas=True)
capability = _accepted(64, commas=False)


@FUZZ
@given(
    name=names,
    family=_accepted(64, commas=True),
    caps=st.lists(capability, min_size=1, max_size=3, unique=True),
    new_name=names,
)
async def test_accepted_injection_strings_are_stored_and_returned_verbatim(
    target: Target, name: str, family: str, caps: list[str], new_name: str
) -> None:
    api, db, tenant = target.api, target.db, target.tokens.tenant
    agent_id = "vb-" + uuid.uuid4().hex[:12]
    body = agent_body(agent_id, task_types=caps, languages=caps[::-1], specializations=caps[:1])
    body.update(name=name, model_family=family)
    status, answer, _ = await api.call("POST", "/v1/agents", body)
    assert status == 201, answer

    status, agent, _ = await api.call("GET", f"/v1/agents/{agent_id}")
    assert status == 200
    assert (agent["name"], agent["model_family"]) == (name, family)
    assert agent["capabilities"] == body["capabilities"]
    row = await db.fetchrow(
        "SELECT name, model_family, task_types, languages, specializations FROM agents "
        "WHERE tenant_id = $1 AND agent_id = $2",
        tenant,
        agent_id,
    )
    assert row is not None
    assert (row["name"], row["model_family"]) == (name, family)
    assert (row["task_types"], row["languages"], row["specializations"]) == (
        caps,
        caps[::-1],
        caps[:1],
    )

    # Exact matching: the value itself finds the agent, as a parameter and never as SQL.
    status, found, _ = await api.call(
        "GET",
        "/v1/agents",
        params={"task_type": caps[0], "languages": ",".join(caps), "limit": "100"},
    )
    assert status == 200, found
    assert agent_id in {r["agent"]["agent_id"] for r in found["results"]}

    status, patched, _ = await api.call("PATCH", f"/v1/agents/{agent_id}", {"name": new_name})
    assert status == 200, patched
    assert patched["name"] == new_name
    assert (
        await db.fetchval(
            "SELECT name FROM agents WHERE tenant_id = $1 AND agent_id = $2", tenant, agent_id
        )
        == new_name
    )

    event_id = "ev-" + uuid.uuid4().hex[:12]
    status, perf, _ = await api.call(
        "POST",
        f"/v1/agents/{agent_id}/performance",
        {"event_id": event_id, "success": True, "quality_score": 1.0, "latency_ms": 1.0,
         "task_type": caps[-1]},
    )  # fmt: skip
    assert status == 201, perf
    assert (
        await db.fetchval(
            "SELECT task_type FROM performance_events WHERE tenant_id = $1 AND event_id = $2",
            tenant,
            event_id,
        )
        == caps[-1]
    )
    # Gone again, so the next example's query ranks few agents; the tables are all still there.
    status, _, _ = await api.call("DELETE", f"/v1/agents/{agent_id}")
    assert status == 204
    live = await db.fetchval(
        "SELECT count(*) FROM agents WHERE tenant_id = $1 AND agent_id = $2 AND deleted_at IS NULL",
        tenant,
        agent_id,
    )
    assert live == 0
    for table in ("agents", "performance_events", "operations", "audit_log", "tenants"):
        assert await db.fetchval(f"SELECT to_regclass('{table}') IS NOT NULL")
