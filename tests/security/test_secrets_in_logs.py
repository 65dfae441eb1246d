"""No token and no password reaches a log line or `registry-proxy config show`.

The sidecar runs as a real process against a private PostgreSQL, through a DSN whose role has a
password (the server trusts local connections, so the password only has to be carried, never
checked). Its whole log, at debug level, is captured over a realistic run: start before the
database is up, every endpoint with the right token, every endpoint without or with wrong tokens,
tokens in query strings and odd headers, refused bodies, an outage with journaled writes and their
replay, SIGHUP, SIGTERM. Then the log is searched for every token, every token's SHA-256, every
token presented by mistake, and the password.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from proxy.http.routes import ROUTES
from proxy.store.embedded import EmbeddedPostgres
from tests.conftest import Tokens, agent_body, eventually
from tests.security import MoreTokens, more_tokens, sha256
from tests.security.test_roles_matrix import RECIPES, Cell
from tests.sidecar import SidecarProcess

FAST = {
    "REGISTRY_PROXY_BREAKER__FAILURE_THRESHOLD": "3",
    "REGISTRY_PROXY_BREAKER__OPEN_BASE_MS": "200",
    "REGISTRY_PROXY_BREAKER__OPEN_MAX_MS": "1000",
    "REGISTRY_PROXY_BREAKER__PROBE_INTERVAL_MS": "50",
    "REGISTRY_PROXY_BREAKER__HALF_OPEN_SUCCESSES": "2",
    "REGISTRY_PROXY_REQUEST__DEFAULT_TIMEOUT_MS": "500",
    "REGISTRY_PROXY_LOG__LEVEL": "debug",
    "REGISTRY_PROXY_LOG__FORMAT": "json",
    # Every request's line too: the test searches all that the sidecar can write.
    "REGISTRY_PROXY_LOG__ACCESS": "true",
}
ROLE = "rp_app"


@pytest.fixture
def own_pg() -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres()
    pg.start()
    yield pg
    pg.cleanup()


@pytest.fixture
def password() -> str:
    return "Pw-" + uuid.uuid4().hex + "~Zq"


async def password_dsn(pg: EmbeddedPostgres, password: str) -> str:
    conn = await asyncpg.connect(pg.dsn)
    try:
        # The password is hex and fixed characters: nothing to quote.
        await conn.execute(f"CREATE ROLE {ROLE} LOGIN SUPERUSER PASSWORD '{password}'")
    finally:
        await conn.close()
    return f"postgresql://{ROLE}:{password}@{pg.host}:{pg.port}/postgres"


async def request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    token: str,
    json: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, Any]:
    """Like tests.sidecar.request, for answers that may not be JSON (/metrics)."""
    h = {"Authorization": f"Bearer {token}", **(headers or {})}
    async with session.request(method, url, json=json, headers=h) as r:
        raw = await r.read()
        is_json = "json" in r.headers.get("Content-Type", "")
        return r.status, (orjson.loads(raw) if raw and is_json else raw), r.headers


def forbidden_strings(
    more: MoreTokens, presented: list[str], password: str | None = None, dsn: str | None = None
) -> list[str]:
    """Every token (configured or presented), its SHA-256, the password in every form."""
    secrets = [*more.all_secrets(), *presented]
    out = [*secrets, *(sha256(s) for s in secrets)]
    if password is not None and dsn is not None:
        out += [password, dsn, base64.b64encode(f"{ROLE}:{password}".encode()).decode()]
    return out


def assert_clean(text: str, forbidden: list[str], where: str) -> None:
    for secret in forbidden:
        assert secret not in text, f"{where} contains a secret ({secret[:6]}...)"


# ---- the sidecar's log -----------------------------------------------------------------------


async def _every_endpoint(s: aiohttp.ClientSession, url: str, more: MoreTokens, tag: str) -> None:
    admin = more.base.admin
    for route in ROUTES:
        cell = Cell(f"{tag}-{route.name}", f"{tag}-op-{route.name}", f"{tag}-new-{route.name}")
        status, body, _ = await request(
            s, "POST", f"{url}/v1/agents", admin, agent_body(cell.agent_id),
            {"Idempotency-Key": cell.op_id},
        )  # fmt: skip
        assert status in (201, 202), body
        call = RECIPES[route.name](cell)
        path = url + call.path + (f"?{call.query}" if call.query else "")
        status, body, _ = await request(s, route.method, path, admin, call.body)
        assert status < 500, (route.name, status, body)


async def _every_mistake(
    s: aiohttp.ClientSession, url: str, more: MoreTokens, password: str
) -> list[str]:
    """Wrong, missing and misplaced credentials, refused bodies; returns the tokens presented."""
    t = more.base
    wrong = [
        "wrong-" + uuid.uuid4().hex,
        t.writer + "x",
        t.admin.upper(),
        t.reader[:-1],
        sha256(more.hashed_writer),
    ]
    basic = base64.b64encode(f"{ROLE}:{password}".encode()).decode()
    for route in ROUTES:
        path = url + route.path.format(agent_id="lg-x", op_id="lg-op-x")
        for header in [
            *(f"Bearer {w}" for w in wrong),
            f"Basic {basic}",
            f"Bearer {password}",
            t.writer,  # no scheme
            "",
        ]:
            async with s.request(route.method, path, headers={"Authorization": header}) as r:
                await r.read()
                assert r.status < 500, (route.name, r.status)
        for query in (f"token={t.writer}", f"access_token={t.admin}&password={password}"):
            async with s.request(route.method, f"{path}?{query}") as r:
                await r.read()
        status, _, _ = await request(s, route.method, f"{path}?api_key={t.admin}", t.reader)
        assert status < 500
    # Tokens in headers that are not Authorization, bodies that are refused.
    for headers in (
        {"X-Api-Key": t.admin},
        {"Cookie": f"session={t.writer}"},
        {"Proxy-Authorization": f"Bearer {t.admin}"},
        {"If-Match": t.writer},
        {"X-Request-Timeout": t.writer},
    ):
        status, _, _ = await request(s, "PATCH", f"{url}/v1/agents/lg-x", t.writer, {}, headers)
        assert 400 <= status < 500
    for body in ({"agent_id": "lg-bad", "name": t.admin}, {"token": t.writer}, [t.reader]):
        status, _, _ = await request(s, "POST", f"{url}/v1/agents", t.writer, body)
        assert status == 422
    async with s.post(
        f"{url}/v1/agents",
        data=b'{"name": "' + t.admin.encode() + b'", broken',
        headers={"Authorization": f"Bearer {t.writer}", "Content-Type": "application/json"},
    ) as r:
        assert r.status == 400
    return wrong


async def _raw(url: str, payload: bytes) -> None:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    if not payload.endswith(b"\r\n\r\n"):
        payload += b"\r\n\r\n"
    payload = payload.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
    writer.write(payload)
    await writer.drain()
    async with asyncio.timeout(10):
        await reader.read()
    writer.close()


async def test_no_secret_in_any_log_line_over_a_realistic_run(
    own_pg: EmbeddedPostgres, password: str, tokens: Tokens, tmp_path: Path
) -> None:
    more = more_tokens(tokens)
    dsn = await password_dsn(own_pg, password)
    log_path = tmp_path / "sidecar.log"
    sidecar = SidecarProcess(
        dsn=dsn,
        tokens_json=more.json(),
        journal_dir=tmp_path / "journal",
        log_path=log_path,
        env=FAST,
    )
    # Start before PostgreSQL: the connection errors get logged too.
    await asyncio.to_thread(own_pg.stop)
    sidecar.start()
    try:
        await sidecar.wait_healthy()
        await eventually(
            lambda: "database not reachable yet" in log_path.read_text(),
            message="connection failure logged",
        )
        await asyncio.to_thread(own_pg.start)
        await sidecar.wait_ready()
        url, t = sidecar.url, tokens
        async with aiohttp.ClientSession() as s:
            await _every_endpoint(s, url, more, "lg")
            presented = await _every_mistake(s, url, more, password)
            # A token followed by bytes that are not UTF-8: an error logged with its traceback.
            auth = b"Authorization: Bearer " + t.admin.encode() + b"\xff"
            await _raw(url, b"GET /v1/stats HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n\r\n")

            # An outage: reads from the replica, writes journaled, one rejected on replay.
            await asyncio.to_thread(own_pg.stop)
            journaled = 0
            for _ in range(6):
                await request(s, "GET", f"{url}/v1/agents/lg-get_agent", t.reader)
                status, body, _ = await request(
                    s, "POST", f"{url}/v1/agents/lg-heartbeat/heartbeat", t.writer, {}
                )
                assert status in (200, 202), body
                journaled += status == 202
            assert journaled, "no write was journaled during the outage"
            status, body, _ = await request(
                s, "PATCH", f"{url}/v1/agents/lg-missing", more.hashed_writer, {"name": "n"}
            )
            assert status == 202, body
            await request(s, "GET", f"{url}/v1/status", t.admin)
            await request(s, "POST", f"{url}/v1/agents", "wrong-" + t.admin, agent_body("z"))
            sidecar.signal(signal.SIGHUP)  # tokens come from the environment: a warning
            await asyncio.to_thread(own_pg.start)

            async def recovered() -> bool:
                _, st, _ = await request(s, "GET", f"{url}/v1/status", t.admin)
                return bool(st["breaker"]["state"] == "closed" and st["journal"]["depth"] == 0)

            await eventually(recovered, timeout=30, message="breaker closed, journal drained")
            await _every_endpoint(s, url, more, "after")
        sidecar.signal(signal.SIGTERM)
        assert await asyncio.to_thread(sidecar.wait_exit, 20) == 0
    finally:
        sidecar.kill()

    log = log_path.read_text()
    # Lines of the stdlib loggers (asyncpg's pool, aiohttp's server) are not JSON: see
    # test_every_log_line_is_json. They are searched for secrets all the same.
    events = [orjson.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert len(events) > 200
    # The run did what it claims: every protected route, the outage, the replay, the refusals.
    routes = {e.get("route") for e in events if e.get("event") == "request"}
    assert {r.name for r in ROUTES if r.role is not None} <= routes
    assert any(e.get("event") == "breaker transition" for e in events)
    assert any(e.get("event") == "journaled write rejected on replay" for e in events)
    assert any(e.get("status") == 401 for e in events)
    assert {e.get("token_id") for e in events} >= {"admin", "reader", "writer", "hashed-writer"}
    assert_clean(log, forbidden_strings(more, presented, password, dsn), "the sidecar log")


@pytest.fixture
def sidecars() -> Iterator[list[SidecarProcess]]:
    started: list[SidecarProcess] = []
    yield started
    for s in started:
        s.kill()


async def _plain_sidecar(
    sidecars: list[SidecarProcess], pg_dsn: str, more: MoreTokens, tmp_path: Path
) -> SidecarProcess:
    sidecar = SidecarProcess(
        dsn=pg_dsn,
        tokens_json=more.json(),
        journal_dir=tmp_path / "journal",
        log_path=tmp_path / "sidecar.log",
        env={"REGISTRY_PROXY_LOG__FORMAT": "json"},
    )
    sidecars.append(sidecar)
    sidecar.start()
    await sidecar.wait_ready()
    return sidecar


async def _refused_by_the_parser(url: str, more: MoreTokens) -> None:
    """Requests aiohttp's HTTP parser refuses before the app sees them."""
    t = more.base
    await _raw(url, b"GET /v1/stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
               + t.admin.encode() + b"\x01\r\n\r\n")  # fmt: skip
    await _raw(url, b"GET /v1/stats?access_token=" + t.writer.encode() + b"&pad=" + b"a" * 9000
               + b" HTTP/1.1\r\nHost: x\r\n\r\n")  # fmt: skip
    await _raw(url, b"GET /v1/stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
               + t.reader.encode() + b"b" * 9000 + b"\r\n\r\n")  # fmt: skip


async def test_requests_the_http_parser_refuses_put_no_token_in_the_log(
    pg_dsn: str, tokens: Tokens, tmp_path: Path, sidecars: list[SidecarProcess]
) -> None:
    more = more_tokens(tokens)
    sidecar = await _plain_sidecar(sidecars, pg_dsn, more, tmp_path)
    await _refused_by_the_parser(sidecar.url, more)
    async with aiohttp.ClientSession() as s:
        status, _, _ = await request(s, "GET", f"{sidecar.url}/v1/stats", tokens.reader)
        assert status == 200
    sidecar.signal(signal.SIGTERM)
    assert await asyncio.to_thread(sidecar.wait_exit, 20) == 0
    log = sidecar.log_path.read_text()
    assert "Error handling request" in log or '"event"' in log
    assert_clean(log, forbidden_strings(more, []), "the sidecar log")


async def test_every_log_line_is_json(
    pg_dsn: str, tokens: Tokens, tmp_path: Path, sidecars: list[SidecarProcess]
) -> None:
    more = more_tokens(tokens)
    sidecar = await _plain_sidecar(sidecars, pg_dsn, more, tmp_path)
    await _raw(sidecar.url, b"GET /v1/stats HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000)
    sidecar.signal(signal.SIGTERM)
    assert await asyncio.to_thread(sidecar.wait_exit, 20) == 0
    for line in sidecar.log_path.read_text().splitlines():
        if line.strip():
            assert isinstance(orjson.loads(line), dict), line


# ---- registry-proxy config show / check ------------------------------------------------------


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_PROXY_")}
    env.update(extra)
    return env


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
def secrets(tokens: Tokens, password: str) -> tuple[MoreTokens, str, str]:
    more = more_tokens(tokens)
    dsn = f"postgresql://{ROLE}:{password}@127.0.0.1:5432/registry"
    return more, password, dsn


async def test_config_show_and_check_mask_every_secret(
    secrets: tuple[MoreTokens, str, str], tmp_path: Path
) -> None:
    more, password, dsn = secrets
    forbidden = forbidden_strings(more, [], password, dsn)
    dsn_file, tokens_file = tmp_path / "dsn", tmp_path / "tokens.json"
    dsn_file.write_text(dsn + "\n")
    tokens_file.write_text(more.json())
    encoded = f"postgresql://{ROLE}:{password}%40%3A%2F@localhost/registry?sslmode=disable"
    variants: list[tuple[str, dict[str, str]]] = [
        ("env", {"REGISTRY_PROXY_DATABASE_URL": dsn, "REGISTRY_PROXY_TOKENS": more.json()}),
        (
            "files",
            {
                "REGISTRY_PROXY_DATABASE_URL_FILE": str(dsn_file),
                "REGISTRY_PROXY_TOKENS_FILE": str(tokens_file),
            },
        ),
        ("encoded", {"REGISTRY_PROXY_DATABASE_URL": encoded, "REGISTRY_PROXY_TOKENS": more.json()}),
        (
            "two-hosts",
            {
                "REGISTRY_PROXY_DATABASE_URL": dsn.replace("@127.0.0.1:5432", "@h1:5432,h2:5433"),
                "REGISTRY_PROXY_TOKENS": more.json(),
            },
        ),
    ]
    results = await asyncio.gather(
        *(run_cli("config", action, env=cli_env(**env))
          for _, env in variants for action in ("show", "check"))
    )  # fmt: skip
    for i, (name, _) in enumerate(variants):
        (rc, out, err), (rc_check, out_check, err_check) = results[2 * i], results[2 * i + 1]
        assert rc == 0, (name, err)
        shown = orjson.loads(out)
        assert shown["database_url"].startswith(f"postgresql://{ROLE}:***@"), shown
        if name != "files":
            assert shown["tokens"] == "**********"
        else:
            assert shown["tokens_file"] == str(tokens_file)
        assert_clean(out + err, forbidden, f"config show ({name})")
        assert password not in out + err
        assert rc_check == 0 and out_check.strip() == "configuration ok", (name, err_check)
        assert_clean(out_check + err_check, forbidden, f"config check ({name})")


async def test_config_check_refuses_an_invalid_value_in_one_line_without_secrets(
    secrets: tuple[MoreTokens, str, str], tmp_path: Path
) -> None:
    more, password, dsn = secrets
    forbidden = forbidden_strings(more, [], password, dsn)
    good = {"REGISTRY_PROXY_DATABASE_URL": dsn, "REGISTRY_PROXY_TOKENS": more.json()}
    secret_token = more.base.admin
    bad_tokens: list[Any] = [
        {"token": secret_token, "tenant": "no spaces allowed", "role": "admin"},
    ]
    cases: dict[str, dict[str, str]] = {
        "port": {**good, "REGISTRY_PROXY_PORT": "not-a-port"},
        "nested": {**good, "REGISTRY_PROXY_BREAKER__FAILURE_THRESHOLD": "0"},
        "enum": {**good, "REGISTRY_PROXY_READ_MODE": "sometimes"},
        "scheme": {**good, "REGISTRY_PROXY_DATABASE_URL": dsn.replace("postgresql", "mysql")},
        "tokens-invalid": {**good, "REGISTRY_PROXY_TOKENS": orjson.dumps(bad_tokens).decode()},
        "tokens-role": {
            **good,
            "REGISTRY_PROXY_TOKENS": orjson.dumps(
                [{"token": secret_token, "tenant": "t", "role": "root"}]
            ).decode(),
        },
        "tokens-json": {**good, "REGISTRY_PROXY_TOKENS": '[{"token": "' + secret_token + '",'},
        "tokens-both": {
            **good,
            "REGISTRY_PROXY_TOKENS": orjson.dumps(
                [
                    {
                        "token": secret_token,
                        "token_sha256": sha256(secret_token),
                        "tenant": "t",
                        "role": "admin",
                    }
                ]
            ).decode(),
        },
        "dsn-file": {
            "REGISTRY_PROXY_DATABASE_URL_FILE": str(tmp_path / "missing"),
            "REGISTRY_PROXY_TOKENS": more.json(),
        },
        "host": {**good, "REGISTRY_PROXY_HOST": "0.0.0.0"},
    }
    results = await asyncio.gather(
        *(run_cli("config", "check", env=cli_env(**env)) for env in cases.values())
    )
    for name, (rc, out, err) in zip(cases, results, strict=True):
        assert rc == 2, (name, rc, out, err)
        lines = (out + err).strip().splitlines()
        assert len(lines) == 1, (name, out, err)
        assert lines[0].startswith("registry-proxy: invalid configuration"), (name, lines)
        assert_clean(out + err, forbidden, f"config check ({name})")
        assert "Traceback" not in err


async def test_config_show_masks_a_password_given_as_a_dsn_parameter(
    secrets: tuple[MoreTokens, str, str],
) -> None:
    more, password, _ = secrets
    dsn = f"postgresql://{ROLE}@127.0.0.1:5432/registry?sslmode=disable&password={password}"
    rc, out, err = await run_cli(
        "config",
        "show",
        env=cli_env(REGISTRY_PROXY_DATABASE_URL=dsn, REGISTRY_PROXY_TOKENS=more.json()),
    )
    assert rc == 0, err
    assert password not in out + err
