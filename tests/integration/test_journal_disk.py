"""The journal at the edges of its disk: a journal volume that fills up during an outage, and a
journal whose last acknowledged record was damaged while the sidecar was stopped."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from proxy.store.journal import JOURNAL_FILE, codec
from tests.conftest import AppFactory, Tokens, agent_body, eventually
from tests.sidecar import SidecarProcess, request
from tests.small_fs import small_filesystem

FAST = {
    "REGISTRY_PROXY_BREAKER__FAILURE_THRESHOLD": "3",
    "REGISTRY_PROXY_BREAKER__OPEN_BASE_MS": "200",
    "REGISTRY_PROXY_BREAKER__OPEN_MAX_MS": "1000",
    "REGISTRY_PROXY_BREAKER__PROBE_INTERVAL_MS": "50",
    "REGISTRY_PROXY_BREAKER__HALF_OPEN_SUCCESSES": "2",
    "REGISTRY_PROXY_REQUEST__DEFAULT_TIMEOUT_MS": "500",
}


@pytest.fixture
def small_journal_disk(tmp_path: Path) -> Iterator[Path]:
    """The journal directory of `make_api` on a 256 KB filesystem of its own."""
    with small_filesystem(tmp_path / "journal", "256k") as mount:
        yield mount


def _gauge(metrics: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", metrics, re.M)
    assert match, f"{name} not exported"
    return float(match.group(1))


async def test_full_journal_disk_refuses_writes_visibly_and_drains_after_the_outage(
    small_journal_disk: Path, make_api: AppFactory, tokens: Tokens, db: asyncpg.Connection
) -> None:
    api = await make_api(journal={"reserve_bytes": 16384})
    admin = api.as_token(tokens.admin)
    for i in range(3):
        status, body, _ = await api.call("POST", "/v1/agents", agent_body(f"base-{i}"))
        assert status == 201, body
    status, body, _ = await admin.call("POST", "/v1/admin/breaker", {"state": "forced_open"})
    assert status == 200, body

    # Write until the journal's disk is full; never a 202 without durability, never a 500.
    accepted: dict[str, str] = {}
    refused: list[tuple[dict[str, Any], Any]] = []
    for i in range(5000):
        status, body, headers = await api.call("POST", "/v1/agents", agent_body(f"acc-{i}"))
        assert status in (202, 503), (status, body)
        if status == 202:
            accepted[body["op_id"]] = f"acc-{i}"
        else:
            refused.append((body, headers))
            if len(refused) == 5:
                break
    assert len(refused) == 5, "the journal disk never filled up"
    assert len(accepted) > 50
    for problem, headers in refused:
        assert problem["type"].endswith("/journal-disk-full"), problem
        assert "local journal disk is full" in problem["detail"], problem
        assert int(headers["Retry-After"]) >= 1
    # A write queued behind journaled writes of the same agent is refused the same way.
    pending_agent = next(iter(accepted.values()))
    status, body, _ = await api.call("POST", f"/v1/agents/{pending_agent}/heartbeat", {})
    assert status == 503 and body["type"].endswith("/journal-disk-full"), body

    # While it lasts, the problem shows: readiness body, status document, metric.
    resp = await api.client.get("/readyz")
    ready = await resp.json()
    assert resp.status == 200 and ready["ready"] is True  # reads still come from the replica
    assert ready["journal"] == "disk-full"
    status, doc, _ = await admin.call("GET", "/v1/status")
    assert status == 200
    journal = doc["journal"]
    assert journal["writable"] is False and journal["failed"] is None
    assert journal["disk"]["full"] is True
    assert journal["disk"]["entries_refused"] >= 6
    assert journal["disk"]["reserve_bytes"] >= journal["disk"]["reserve_needed_bytes"]
    depth_when_full = journal["depth"]
    assert depth_when_full >= len(accepted)
    metrics = await (await api.client.get("/metrics")).text()
    assert _gauge(metrics, "registry_proxy_journal_writable") == 0

    # PostgreSQL is back: the journal drains and takes writes again.
    status, body, _ = await admin.call("POST", "/v1/admin/breaker", {"state": "automatic"})
    assert status == 200, body

    async def drained() -> bool:
        _, doc, _ = await admin.call("GET", "/v1/status")
        return bool(doc["journal"]["depth"] == 0 and doc["journal"]["writable"])

    await eventually(drained, timeout=60, message="journal drained and writable")
    _, doc, _ = await admin.call("GET", "/v1/status")
    assert doc["journal"]["disk"]["full"] is False
    assert doc["journal"]["compactions"] >= 1
    assert doc["journal"]["failed"] is None
    assert doc["replay"]["applied"] >= len(accepted)

    # Every acknowledged write is applied exactly once; none of the refused ones is.
    ops = await db.fetch(
        "SELECT op_id, status FROM operations WHERE tenant_id = $1 AND op_id = ANY($2::text[])",
        tokens.tenant,
        list(accepted),
    )
    assert {row["op_id"]: row["status"] for row in ops} == dict.fromkeys(accepted, "applied")
    agents = await db.fetch(
        "SELECT agent_id FROM agents WHERE tenant_id = $1 AND agent_id LIKE 'acc-%'",
        tokens.tenant,
    )
    assert sorted(row["agent_id"] for row in agents) == sorted(accepted.values())

    resp = await api.client.get("/readyz")
    assert (await resp.json())["journal"] == "ok"
    metrics = await (await api.client.get("/metrics")).text()
    assert _gauge(metrics, "registry_proxy_journal_writable") == 1
    status, body, _ = await api.call("POST", "/v1/agents", agent_body("after-the-heal"))
    assert status == 201, body


# --------------------------------------------------------------------------- damage


def _last_entry(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    offset, last = 0, None
    while offset < len(data):
        parsed = codec.parse(data, offset)
        assert not isinstance(parsed, str), (offset, parsed)
        if parsed.rtype == codec.TYPE_ENTRY:
            last = (offset, parsed.end)
        offset = parsed.end
    assert last is not None
    return last


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("recovery", ["cli", "setting"])
async def test_damaged_last_acknowledged_record_stops_start_up_until_set_aside(
    migrated_dsn: str, tokens: Tokens, tmp_path: Path, recovery: str
) -> None:
    journal_dir = tmp_path / "journal"
    started: list[SidecarProcess] = []

    def sidecar(name: str, extra: dict[str, str] | None = None) -> SidecarProcess:
        process = SidecarProcess(
            dsn=migrated_dsn,
            tokens_json=tokens.spec(),
            journal_dir=journal_dir,
            log_path=tmp_path / f"{name}.log",
            env={**FAST, **(extra or {})},
        )
        started.append(process)
        process.start()
        return process

    try:
        first = sidecar("first")
        await first.wait_ready()
        op_ids: list[str] = []
        async with aiohttp.ClientSession() as s:
            st, body, _ = await request(
                s, "POST", f"{first.url}/v1/admin/breaker", tokens.admin, {"state": "forced_open"}
            )
            assert st == 200, body
            for i in range(5):
                st, body, _ = await request(
                    s, "POST", f"{first.url}/v1/agents", tokens.writer, agent_body(f"dmg-{i}")
                )
                assert st == 202, body
                op_ids.append(body["op_id"])
        first.signal(signal.SIGTERM)
        assert await asyncio.to_thread(first.wait_exit, 30) == 0, first.log()

        # Damage the last acknowledged record while the sidecar is stopped.
        path = journal_dir / JOURNAL_FILE
        start, end = _last_entry(path)
        data = bytearray(path.read_bytes())
        assert orjson.loads(data[start + 12 : end])["op_id"].endswith("/" + op_ids[-1])
        data[end - 9] ^= 0x20
        path.write_bytes(bytes(data))
        damaged_record = bytes(data[start:end])

        # Start-up refuses, saying where and what to do; nothing was dropped meanwhile.
        refused = sidecar("refused")
        code = await asyncio.to_thread(refused.wait_exit, 30)
        assert code != 0
        log = refused.log()
        assert f"is damaged at offset {start} (checksum mismatch" in log, log
        assert "registry-proxy journal recover" in log
        assert path.read_bytes() == bytes(data)

        env = {**refused.env}
        check = _cli(env, "journal", "check")
        assert check.returncode == 1, check.stdout + check.stderr
        assert orjson.loads(check.stdout)["damage"][0]["offset"] == start

        if recovery == "cli":
            done = _cli(env, "journal", "recover")
            assert done.returncode == 0, done.stdout + done.stderr
            report = orjson.loads(done.stdout)
            assert report["depth"] == 5  # four registrations and the admin's audit record
            [event] = report["damage"]["quarantined"]
            assert event["bytes"] == len(damaged_record)
            assert (journal_dir / event["file"]).read_bytes() == damaged_record
            third = sidecar("third")
        else:
            third = sidecar("third", {"REGISTRY_PROXY_JOURNAL__ON_DAMAGE": "quarantine"})
        await third.wait_ready()

        async with aiohttp.ClientSession() as s:
            st, doc, _ = await request(s, "GET", f"{third.url}/v1/status", tokens.admin)
            assert st == 200, doc
            side_files = doc["journal"]["damage"]["side_files"]
            assert [side["bytes"] for side in side_files] == [len(damaged_record)]
            side = journal_dir / side_files[0]["file"]
            assert side.read_bytes() == damaged_record
            assert (
                orjson.loads(side.with_name(side.name + ".json").read_bytes())["regions"][0][
                    "offset"
                ]
                == start
            )
            async with s.get(f"{third.url}/metrics") as r:
                assert _gauge(await r.text(), "registry_proxy_journal_quarantine_files") == 1
            if recovery == "setting":
                [event] = doc["journal"]["damage"]["quarantined"]
                assert event["regions"][0]["offset"] == start
                assert "journal_damage_quarantined" in third.log()

            async def drained() -> bool:
                _, doc, _ = await request(s, "GET", f"{third.url}/v1/status", tokens.admin)
                return bool(doc["journal"]["depth"] == 0)

            await eventually(drained, timeout=30, message="the rest of the journal applied")

        conn = await asyncpg.connect(migrated_dsn)
        try:
            rows = await conn.fetch(
                "SELECT op_id FROM operations WHERE tenant_id = $1 AND op_id = ANY($2::text[])",
                tokens.tenant,
                op_ids,
            )
        finally:
            await conn.close()
        # The four intact writes are applied; the damaged one was set aside, and said so.
        assert sorted(row["op_id"] for row in rows) == sorted(op_ids[:-1])
    finally:
        for process in started:
            process.kill()
