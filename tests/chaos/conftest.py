"""Chaos fixtures: PostgreSQL, then Toxiproxy in front of it, then the sidecar pointed at Toxiproxy.

Toxiproxy is a real `toxiproxy-server` when TOXIPROXY_URL is set or the binary is on PATH, and
otherwise the bundled compatible server (`python -m chaos.toxiproxy`). Either way the tests drive
it with the public `toxiproxy-python` client, so the same scenarios run both ways.

With REGISTRY_PROXY_TEST_PGBOUNCER=1 the sidecar's pool goes through a PgBouncer in transaction
pooling whose server connections cross the Toxiproxy (the network between the pooler and
PostgreSQL fails), and its direct DSN (the replica's LISTEN, the migrations) crosses the same
Toxiproxy: the fleet topology of docs/fleet.md under the same faults.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import asyncpg
import pytest
from pydantic import SecretStr
from toxiproxy import Toxiproxy
from toxiproxy.proxy import Proxy

from chaos.toxiproxy.testing import toxiproxy_process, wait_for_version
from proxy.http import keys
from proxy.store.embedded import EmbeddedPostgres, free_port
from tests.conftest import Api, AppFactory, agent_body, app_of, eventually
from tests.topology.pgbouncer import PgBouncer

pytestmark = pytest.mark.chaos

# Small numbers so every rule trips within a second or two of a fault.
CHAOS_SETTINGS: dict[str, Any] = {
    "breaker": {
        "failure_threshold": 3,
        "window_s": 5,
        "min_calls": 6,
        "failure_rate": 0.5,
        "slow_call_ms": 400,
        "slow_call_rate": 0.5,
        "open_base_ms": 200,
        "open_max_ms": 2000,
        "open_multiplier": 2.0,
        "probe_interval_ms": 50,
        "probe_timeout_ms": 500,
        "half_open_max_calls": 2,
        "half_open_successes": 2,
    },
    "request": {"default_timeout_ms": 1500},
    "database": {"connect_timeout_ms": 1000, "acquire_timeout_ms": 1000, "pool_max_size": 8},
    "retry": {"attempts": 2, "base_ms": 10, "max_ms": 50},
}


@pytest.fixture
async def make_api(make_api: AppFactory) -> AsyncIterator[AppFactory]:
    """The sidecar factory; through PgBouncer when REGISTRY_PROXY_TEST_PGBOUNCER is set."""
    if not os.environ.get("REGISTRY_PROXY_TEST_PGBOUNCER"):
        yield make_api
        return
    bouncers: list[PgBouncer] = []

    async def factory(dsn: str | None = None, **overrides: Any) -> Api:
        assert dsn is not None, "a chaos sidecar is given the Toxiproxy's DSN"
        # server_login_retry: PgBouncer's 15 s pause after a failed login outlasts a heal; a
        # fleet tuned for failover lowers it (docs/fleet.md), as here.
        bouncer = PgBouncer(
            dsn, default_pool_size=10, max_client_conn=500, settings={"server_login_retry": 1}
        )
        bouncers.append(bouncer)
        await bouncer.__aenter__()
        database = {**overrides.pop("database", {}), "pooler": "transaction"}
        return await make_api(
            bouncer.dsn, database_direct_url=SecretStr(dsn), database=database, **overrides
        )

    yield factory
    for bouncer in reversed(bouncers):
        await bouncer.__aexit__(None, None, None)


@pytest.fixture(scope="session")
def toxiproxy_url() -> Iterator[str]:
    url = os.environ.get("TOXIPROXY_URL")
    if url:
        yield url.rstrip("/")
        return
    binary = shutil.which("toxiproxy-server")
    if binary:
        port = free_port()
        proc = subprocess.Popen(  # noqa: S603
            [binary, "-host", "127.0.0.1", "-port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for_version(url, process=proc)
            yield url
        finally:
            proc.terminate()
            proc.wait(10)
        return
    with toxiproxy_process() as url:
        yield url


@pytest.fixture(scope="session")
def toxiproxy(toxiproxy_url: str) -> Toxiproxy:
    parsed = urlparse(toxiproxy_url)
    client = Toxiproxy()
    client.update_api_consumer(parsed.hostname, parsed.port)
    return client


@pytest.fixture
def pg() -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def pg_proxy(toxiproxy: Toxiproxy, pg: EmbeddedPostgres) -> Iterator[Proxy]:
    proxy = toxiproxy.create(
        upstream=f"127.0.0.1:{pg.port}", name=f"pg-{uuid.uuid4().hex[:8]}", listen="127.0.0.1:0"
    )
    yield proxy
    proxy.destroy()


def proxied_dsn(proxy: Proxy) -> str:
    host, _, port = proxy.listen.rpartition(":")
    host = "127.0.0.1" if host in ("", "[::]", "0.0.0.0") else host  # noqa: S104
    return f"postgresql://postgres@{host}:{port}/postgres"


async def in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """The toxiproxy client is synchronous: keep it off the loop the sidecar runs on."""
    return await asyncio.to_thread(fn, *args, **kwargs)


@dataclass
class Outcome:
    op: str
    status: int
    source: str
    body: Any
    seconds: float
    target: str
    sent: Any = None


@dataclass
class Workload:
    """Mixed reads and writes against one sidecar; every request and answer is recorded."""

    api: Api
    known: list[str]
    outcomes: list[Outcome] = field(default_factory=list)
    counter: int = 0

    async def _call(self, op: str, method: str, path: str, body: Any, target: str) -> Outcome:
        started = time.perf_counter()
        status, answer, headers = await self.api.call(method, path, body)
        out = Outcome(
            op,
            status,
            headers.get("X-Registry-Source", ""),
            answer,
            time.perf_counter() - started,
            target,
            body,
        )
        self.outcomes.append(out)
        return out

    async def step(self) -> None:
        self.counter += 1
        n = self.counter
        agent = self.known[n % len(self.known)]
        await self._call("get", "GET", f"/v1/agents/{agent}", None, agent)
        await self._call("query", "GET", "/v1/agents?task_type=code&limit=20", None, "")
        await self._call(
            "performance",
            "POST",
            f"/v1/agents/{agent}/performance",
            {
                "event_id": f"ev-{uuid.uuid4().hex}",
                "success": n % 3 != 0,
                "quality_score": 0.5,
                "latency_ms": 12,
            },
            agent,
        )
        if n % 4 == 0:
            new_id = f"new-{n}-{uuid.uuid4().hex[:6]}"
            await self._call("register", "POST", "/v1/agents", agent_body(new_id), new_id)
        if n % 5 == 0:
            await self._call(
                "load",
                "PUT",
                f"/v1/agents/{agent}/load",
                {
                    "active_tasks": n % 7,
                    "queued_tasks": 0,
                    "observed_at": f"2026-06-01T00:{(n // 60) % 60:02d}:{n % 60:02d}+00:00",
                },
                agent,
            )

    async def run_for(self, seconds: float, *, pause: float = 0.01) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            await self.step()
            await asyncio.sleep(pause)  # pacing of the workload, not synchronisation

    def reads(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.op in ("get", "query")]

    def acknowledged(self) -> list[Outcome]:
        return [
            o for o in self.outcomes if o.op not in ("get", "query") and o.status in (200, 201, 202)
        ]


async def start_sidecar(make_api: AppFactory, dsn: str, **overrides: Any) -> Api:
    settings = {**CHAOS_SETTINGS}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(settings.get(key), dict):
            settings[key] = {**settings[key], **value}
        else:
            settings[key] = value
    return await make_api(dsn, **settings)


async def seed(api: Api, count: int = 4) -> list[str]:
    known = [f"known-{i}" for i in range(count)]
    for agent_id in known:
        status, body, _ = await api.call("POST", "/v1/agents", agent_body(agent_id))
        assert status == 201, body
    replica = app_of(api)[keys.SERVICE].replica
    assert replica is not None
    tenant = tenant_of(api)
    await eventually(
        lambda: all(replica.get(tenant, a) for a in known),
        timeout=10,
        message="replica holds the seeded agents",
    )
    return known


def tenant_of(api: Api) -> str:
    return next(t for t in app_of(api)[keys.TOKENS].tenants() if t.startswith("t-"))


def transitions(api: Api) -> list[tuple[str, str]]:
    return [
        (t.from_state.value, t.to_state.value)
        for t in app_of(api)[keys.SERVICE].breaker.transitions
    ]


def state(api: Api) -> str:
    return app_of(api)[keys.SERVICE].breaker.state.value


async def wait_state(api: Api, wanted: str, timeout: float = 15.0) -> None:
    await eventually(
        lambda: state(api) == wanted,
        timeout=timeout,
        message=f"breaker {wanted} (now {state(api)}, {transitions(api)})",
    )


async def drive_until(api: Api, work: Workload, wanted: str, timeout: float = 15.0) -> None:
    """Keep the workload going until the breaker reaches `wanted`."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while state(api) != wanted:
        if loop.time() > end:
            raise AssertionError(f"breaker never reached {wanted}: {transitions(api)}")
        await work.step()


async def database_answers(api: Api, timeout: float = 15.0) -> None:
    """Until PostgreSQL answers on the DSN the sidecar itself uses. Through PgBouncer a healed
    link is not enough: after a failed server login PgBouncer refuses for `server_login_retry`
    more, and a sidecar whose breaker counts again in that window rightly opens it."""
    url = app_of(api)[keys.SETTINGS].database_url
    assert url is not None

    async def answers() -> bool:
        try:
            conn = await asyncpg.connect(
                url.get_secret_value(), timeout=1.0, statement_cache_size=0
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False
        try:
            await conn.execute("SELECT 1", timeout=1.0)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False
        finally:
            await conn.close()
        return True

    await eventually(answers, timeout=timeout, message="PostgreSQL answers the sidecar's DSN")


async def healed_and_drained(api: Api, timeout: float = 30.0) -> None:
    service = app_of(api)[keys.SERVICE]

    async def done() -> bool:
        if service.breaker.state.value != "closed":
            # Nudge the half-open breaker with a read, as the host app would.
            await api.call("GET", "/v1/stats")
            return False
        journal = service.journal
        return journal is None or journal.depth == 0

    await eventually(done, timeout=timeout, message="breaker closed and journal drained")


async def assert_no_loss(api: Api, work: Workload, dsn: str) -> None:
    """Every acknowledged write is in PostgreSQL or rejected with a reason; nothing twice."""
    await healed_and_drained(api)
    tenant = tenant_of(api)
    conn = await asyncpg.connect(dsn)
    try:
        agents = {
            r["agent_id"]: r
            for r in await conn.fetch(
                "SELECT agent_id, task_count, deleted_at FROM agents WHERE tenant_id = $1", tenant
            )
        }
        events = {
            r["event_id"]: r["agent_id"]
            for r in await conn.fetch(
                "SELECT event_id, agent_id FROM performance_events WHERE tenant_id = $1", tenant
            )
        }
        ops = {
            r["op_id"]: r
            for r in await conn.fetch(
                "SELECT op_id, status, reason FROM operations WHERE tenant_id = $1", tenant
            )
        }
    finally:
        await conn.close()
    for o in work.acknowledged():
        if o.status == 202:
            op = ops.get(o.body["op_id"])
            assert op is not None, f"journaled {o.op} {o.body} never reached the ledger"
            assert op["status"] in ("applied", "rejected"), op
            if op["status"] == "rejected":
                assert op["reason"], op
                continue
        if o.op == "register":
            assert o.target in agents, f"acknowledged registration {o.target} is missing"
        if o.op == "performance":
            event = o.sent["event_id"]
            assert events.get(event) == o.target, f"acknowledged event {event} is missing"
    # Nothing counted twice: each agent's sums equal the distinct events stored for it.
    per_agent: dict[str, int] = {}
    for agent_id in events.values():
        per_agent[agent_id] = per_agent.get(agent_id, 0) + 1
    for agent_id, row in agents.items():
        assert row["task_count"] == per_agent.get(agent_id, 0), (agent_id, row["task_count"])


def assert_cached_reads_never_5xx(work: Workload) -> None:
    bad = [(o.op, o.status, o.body) for o in work.reads() if o.status >= 500]
    assert not bad, bad[:5]
