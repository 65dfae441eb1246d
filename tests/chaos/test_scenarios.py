"""Each scenario injects one fault between the sidecar and PostgreSQL, drives a mixed workload,
asserts the breaker transitions it expects and what the host app saw, then heals the fault and
checks that every acknowledged write is in PostgreSQL or rejected with a reason."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from toxiproxy.proxy import Proxy

from proxy.app import PROBE
from proxy.http import keys
from proxy.store.embedded import EmbeddedPostgres
from tests.chaos.conftest import (
    Workload,
    app_of,
    assert_cached_reads_never_5xx,
    assert_no_loss,
    database_answers,
    drive_until,
    in_thread,
    proxied_dsn,
    seed,
    start_sidecar,
    state,
    transitions,
    wait_state,
)
from tests.conftest import AppFactory, Tokens, agent_body, eventually
from tests.sidecar import SidecarProcess, request

pytestmark = pytest.mark.chaos


_DB_CALLS = re.compile(
    r'registry_proxy_db_call_duration_seconds_count\{operation="([^"]+)",outcome="([^"]+)"\} (\S+)'
)


async def attempted_calls(api: Any) -> dict[str, float]:
    """Database calls of requests that were attempted (not refused by the breaker), by
    operation and outcome, from /metrics."""
    text = await (await api.client.get("/metrics")).text()
    return {
        f"{op}/{outcome}": float(n)
        for op, outcome, n in _DB_CALLS.findall(text)
        if outcome != "rejected" and op != "replay"
    }


async def _setup(make_api: AppFactory, pg_proxy: Proxy, **overrides: Any) -> tuple[Any, Workload]:
    api = await start_sidecar(make_api, proxied_dsn(pg_proxy), **overrides)
    known = await seed(api)
    return api, Workload(api, known)


async def test_proxy_down_trips_probe_half_opens_and_healing_closes(
    make_api: AppFactory, pg_proxy: Proxy, pg: EmbeddedPostgres
) -> None:
    api, work = await _setup(make_api, pg_proxy)
    await work.run_for(0.3)
    await in_thread(pg_proxy.disable)
    await drive_until(api, work, "open")
    # While open: reads from the replica, writes journaled, nobody waits for PostgreSQL: every
    # request's database call is refused by the breaker, none is attempted but the half-open
    # trials. (The workload is sequential, so nothing is in flight when the breaker opens.)
    attempted = await attempted_calls(api)
    assert attempted.get("get_agent/success", 0) > 0, attempted  # the calls before the fault
    seen = len(transitions(api))
    await work.run_for(0.5)
    during = work.outcomes[-20:]
    assert {o.source for o in during if o.op == "get"} == {"replica"}
    assert {o.status for o in during if o.op == "performance"} == {202}
    trials = transitions(api)[seen:].count(("open", "half_open"))
    allowed = trials * app_of(api)[keys.SERVICE].breaker.half_open_max_calls
    after = await attempted_calls(api)
    assert sum(after.values()) - sum(attempted.values()) <= allowed, (attempted, after, trials)
    await in_thread(pg_proxy.enable)
    await wait_state(api, "half_open")
    await drive_until(api, work, "closed")
    edges = transitions(api)
    for edge in [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]:
        assert edge in edges, edges
    probe_cause = next(
        t.cause
        for t in app_of(api)[keys.SERVICE].breaker.transitions
        if t.to_state.value == "half_open"
    )
    assert probe_cause in ("probe answered", "open period elapsed")
    assert_cached_reads_never_5xx(work)
    await assert_no_loss(api, work, pg.dsn)


async def test_fault_returning_during_the_trial_reopens(
    make_api: AppFactory, pg_proxy: Proxy, pg: EmbeddedPostgres
) -> None:
    api, work = await _setup(make_api, pg_proxy)
    await in_thread(pg_proxy.disable)
    await drive_until(api, work, "open")
    await in_thread(pg_proxy.enable)
    # Only this workload calls through the breaker, so half_open holds until it sends a trial.
    await wait_state(api, "half_open")
    await in_thread(pg_proxy.disable)
    await work.step()
    assert ("half_open", "open") in transitions(api), transitions(api)
    service = app_of(api)[keys.SERVICE]
    assert service.breaker.consecutive_trips >= 2
    await in_thread(pg_proxy.enable)
    assert_cached_reads_never_5xx(work)
    await assert_no_loss(api, work, pg.dsn)


@pytest.mark.parametrize(
    ("toxic", "attributes"),
    [("latency", {"latency": 3000, "jitter": 0}), ("timeout", {"timeout": 0})],
    ids=["latency-above-deadline", "timeout"],
)
async def test_calls_that_time_out_trip_the_breaker(
    make_api: AppFactory,
    pg_proxy: Proxy,
    pg: EmbeddedPostgres,
    toxic: str,
    attributes: dict[str, int],
) -> None:
    api, work = await _setup(make_api, pg_proxy, request={"default_timeout_ms": 600})
    await in_thread(pg_proxy.add_toxic, type=toxic, name="slow", attributes=attributes)
    await drive_until(api, work, "open", timeout=30)
    first_open = next(
        t for t in app_of(api)[keys.SERVICE].breaker.transitions if t.to_state.value == "open"
    )
    assert (
        "Deadline" in first_open.cause
        or "slow" in first_open.cause
        or ("Timeout" in first_open.cause)
    ), first_open.cause
    await work.run_for(0.3)
    assert {o.source for o in work.outcomes[-8:] if o.op == "get"} == {"replica"}
    await in_thread(pg_proxy.destroy_toxic, "slow")
    assert_cached_reads_never_5xx(work)
    await assert_no_loss(api, work, pg.dsn)


@pytest.mark.parametrize(
    ("toxic", "attributes"),
    [("reset_peer", {"timeout": 0}), ("limit_data", {"bytes": 300})],
    ids=["reset_peer", "limit_data"],
)
async def test_connections_dying_mid_query(
    make_api: AppFactory,
    pg_proxy: Proxy,
    pg: EmbeddedPostgres,
    toxic: str,
    attributes: dict[str, int],
) -> None:
    api, work = await _setup(make_api, pg_proxy)
    await in_thread(pg_proxy.add_toxic, type=toxic, name="cut", attributes=attributes)
    # Live connections die on their next exchange; new ones die at once.
    service = app_of(api)[keys.SERVICE]
    if service.db.pool is not None:
        await service.db.pool.expire_connections()
    await drive_until(api, work, "open", timeout=20)
    await work.run_for(0.3)
    await in_thread(pg_proxy.destroy_toxic, "cut")
    assert_cached_reads_never_5xx(work)
    await assert_no_loss(api, work, pg.dsn)


@pytest.mark.parametrize(
    ("toxic", "attributes"),
    [
        ("slicer", {"average_size": 64, "size_variation": 32, "delay": 50}),
        ("latency", {"latency": 40, "jitter": 10}),
    ],
    ids=["slicer", "modest-latency"],
)
async def test_slow_but_correct_traffic_does_not_trip(
    make_api: AppFactory,
    pg_proxy: Proxy,
    pg: EmbeddedPostgres,
    toxic: str,
    attributes: dict[str, int],
) -> None:
    api, work = await _setup(make_api, pg_proxy)
    await in_thread(pg_proxy.add_toxic, type=toxic, name="mild", attributes=attributes)
    await work.run_for(2.0)
    await in_thread(pg_proxy.destroy_toxic, "mild")
    assert state(api) == "closed"
    assert transitions(api) == []
    assert {o.status for o in work.outcomes} <= {200, 201}, {o.status for o in work.outcomes}
    assert {o.source for o in work.outcomes} == {"database"}
    await assert_no_loss(api, work, pg.dsn)


async def test_bandwidth_starvation_trips_the_slow_call_rule(
    make_api: AppFactory, pg_proxy: Proxy, pg: EmbeddedPostgres
) -> None:
    api, work = await _setup(
        make_api,
        pg_proxy,
        request={"default_timeout_ms": 5000},
        breaker={
            "slow_call_ms": 150,
            "failure_threshold": 50,
            "failure_rate": 1.0,
            "window_s": 20,
            "min_calls": 4,
        },
    )
    await in_thread(pg_proxy.add_toxic, type="bandwidth", name="thin", attributes={"rate": 1})
    await drive_until(api, work, "open", timeout=40)
    cause = next(
        t.cause for t in app_of(api)[keys.SERVICE].breaker.transitions if t.to_state.value == "open"
    )
    assert "slow" in cause, cause
    await in_thread(pg_proxy.destroy_toxic, "thin")
    assert_cached_reads_never_5xx(work)
    await assert_no_loss(api, work, pg.dsn)


async def test_flapping_keeps_the_probe_rate_bounded(
    make_api: AppFactory, pg_proxy: Proxy, pg: EmbeddedPostgres
) -> None:
    api, work = await _setup(make_api, pg_proxy)
    app = app_of(api)
    probe = app[PROBE]
    before = probe.probes_total

    breaker = app[keys.SERVICE].breaker

    def opens() -> int:
        return sum(1 for t in breaker.transitions if t.to_state.value == "open")

    async def flap() -> None:
        # At least 12 flaps, and on until the breaker has opened twice (a busy machine runs
        # fewer calls per flap), 40 at most.
        for n in range(40):
            if n >= 12 and opens() >= 2:
                return
            await in_thread(pg_proxy.disable)
            await asyncio.sleep(0.25)  # the fault's rhythm, not synchronisation
            await in_thread(pg_proxy.enable)
            await asyncio.sleep(0.15)

    started = time.monotonic()
    flapping = asyncio.create_task(flap())
    while not flapping.done():
        await work.step()
    await flapping
    elapsed = time.monotonic() - started
    assert opens() >= 2, transitions(api)
    # Re-trips grew the open period instead of probing in step with the flapping.
    assert breaker.consecutive_trips == 0 or breaker.open_period > 0.2
    probes = probe.probes_total - before
    assert probes <= elapsed / 0.05, (probes, elapsed)
    assert_cached_reads_never_5xx(work)
    await assert_no_loss(api, work, pg.dsn)


async def test_postgres_restart_behind_a_healthy_proxy(
    make_api: AppFactory, pg_proxy: Proxy, pg: EmbeddedPostgres
) -> None:
    api, work = await _setup(make_api, pg_proxy)
    await work.run_for(0.3)
    await asyncio.to_thread(pg.stop, "immediate")
    await work.run_for(0.5)
    await asyncio.to_thread(pg.start)
    await work.run_for(0.3)
    assert_cached_reads_never_5xx(work)
    await assert_no_loss(api, work, pg.dsn)
    assert state(api) == "closed"


async def test_forced_open_and_disabled_overrides(
    make_api: AppFactory, pg_proxy: Proxy, pg: EmbeddedPostgres, tokens: Tokens
) -> None:
    api, work = await _setup(make_api, pg_proxy)
    admin = api.as_token(tokens.admin)
    status, body, _ = await admin.call("POST", "/v1/admin/breaker", {"state": "forced_open"})
    assert status == 200 and body["state"] == "forced_open"
    await work.run_for(0.3)
    assert {o.status for o in work.outcomes if o.op == "performance"} == {202}
    status, body, _ = await admin.call("POST", "/v1/admin/breaker", {"state": "automatic"})
    assert body["state"] == "closed"
    status, body, _ = await admin.call("POST", "/v1/admin/breaker", {"state": "disabled"})
    assert body["state"] == "disabled"
    await in_thread(pg_proxy.disable)
    await work.run_for(0.8)
    # Disabled: failures are not counted, the breaker stays put, fallbacks still answer.
    assert state(api) == "disabled"
    assert_cached_reads_never_5xx(work)
    await in_thread(pg_proxy.enable)
    # Back to automatic once PostgreSQL answers again: the journal's replay starts at once, and
    # failures it met then would be counted.
    await database_answers(api)
    status, body, _ = await admin.call("POST", "/v1/admin/breaker", {"state": "automatic"})
    assert body["state"] == "closed"
    edges = transitions(api)
    for edge in [
        ("closed", "forced_open"),
        ("forced_open", "closed"),
        ("closed", "disabled"),
        ("disabled", "closed"),
    ]:
        assert edge in edges, edges
    await assert_no_loss(api, work, pg.dsn)


async def test_sidecar_sigkill_mid_outage_keeps_journaled_writes(
    pg_proxy: Proxy, pg: EmbeddedPostgres, tokens: Tokens, tmp_path: Path
) -> None:
    env = {
        "REGISTRY_PROXY_BREAKER__FAILURE_THRESHOLD": "3",
        "REGISTRY_PROXY_BREAKER__OPEN_BASE_MS": "200",
        "REGISTRY_PROXY_BREAKER__PROBE_INTERVAL_MS": "50",
        "REGISTRY_PROXY_BREAKER__HALF_OPEN_SUCCESSES": "2",
        "REGISTRY_PROXY_REQUEST__DEFAULT_TIMEOUT_MS": "800",
    }
    dsn = proxied_dsn(pg_proxy)
    first = SidecarProcess(
        dsn=dsn,
        tokens_json=tokens.spec(),
        journal_dir=tmp_path / "j",
        log_path=tmp_path / "first.log",
        env=env,
    )
    second = SidecarProcess(
        dsn=dsn,
        tokens_json=tokens.spec(),
        journal_dir=tmp_path / "j",
        log_path=tmp_path / "second.log",
        env=env,
    )
    first.start()
    try:
        await first.wait_ready()
        w = tokens.writer
        async with aiohttp.ClientSession() as s:
            for i in range(3):
                st, body, _ = await request(
                    s, "POST", f"{first.url}/v1/agents", w, agent_body(f"k{i}")
                )
                assert st == 201, body

            async def replica_warm() -> bool:
                _, body, _ = await request(s, "GET", f"{first.url}/v1/status", w)
                return bool(body["replica"]["agents"] == 3)

            await eventually(replica_warm, timeout=10, message="replica loaded")
            await in_thread(pg_proxy.disable)
            accepted = []
            for i in range(6):
                st, body, _ = await request(
                    s,
                    "POST",
                    f"{first.url}/v1/agents/k1/performance",
                    w,
                    {
                        "event_id": f"kill-{i}",
                        "success": True,
                        "quality_score": 1.0,
                        "latency_ms": 1,
                    },
                )
                assert st == 202, body
                accepted.append(body["op_id"])
            await eventually(
                lambda: (tmp_path / "j" / "replica.snapshot").exists(),
                timeout=10,
                message="snapshot on open",
            )
            first.kill()
            second.start()
            await second.wait_healthy()
            st, body, headers = await request(s, "GET", f"{second.url}/v1/agents/k1", w)
            assert st == 200 and headers["X-Registry-Source"] == "replica"
            assert body["performance"]["task_count"] == 6
            await in_thread(pg_proxy.enable)

            async def applied() -> bool:
                for op_id in accepted:
                    _, body, _ = await request(s, "GET", f"{second.url}/v1/operations/{op_id}", w)
                    if body.get("status") != "applied":
                        return False
                return True

            await eventually(applied, timeout=30, message="journal applied after restart")
    finally:
        first.kill()
        second.kill()
    conn = await asyncpg.connect(pg.dsn)
    try:
        count = await conn.fetchval(
            "SELECT task_count FROM agents WHERE tenant_id = $1 AND agent_id = 'k1'",
            tokens.tenant,
        )
        assert count == 6
    finally:
        await conn.close()
