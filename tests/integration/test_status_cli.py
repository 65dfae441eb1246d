"""`registry-proxy status` against a live sidecar: healthy, forced open, draining, not running.

The sidecar runs in this test's event loop, so the command (blocking HTTP) runs on a thread, or
as a real process for the entry point itself.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import sys
from typing import Any

import asyncpg

from proxy.cli import main
from proxy.http import keys
from proxy.status_cli import DEFAULT_URL, add_parser, run
from proxy.store.embedded import free_port
from tests.conftest import Api, AppFactory, Tokens, agent_body, app_of, eventually


def _url(api: Api) -> str:
    return str(api.client.make_url("/")).rstrip("/")


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["status", *argv])


async def _status(*argv: str, environ: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(run, _args(*argv), environ=environ or {}, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


async def _process(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "status",
        *argv,
        env={"PATH": os.environ.get("PATH", ""), **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_healthy_sidecar_through_the_real_command(
    make_api: AppFactory, tokens: Tokens
) -> None:
    api = await make_api()
    assert (await api.call("POST", "/v1/agents", agent_body("st-1")))[0] == 201
    code, out, err = await _process(
        "--url", _url(api), env={"REGISTRY_PROXY_STATUS_TOKEN": tokens.admin}
    )
    assert code == 0, err
    assert "(every tenant)" in out
    assert "breaker   closed: calls go to PostgreSQL" in out
    assert "no transition since the sidecar started" in out
    assert "journal   0 acknowledged writes not yet applied" in out
    assert "listener connected" in out and "1 agent," in out
    assert "overload  bulkhead 0/10 in use, 0 queued (at most 256)" in out
    assert "shed: queue-full 0, queue-timeout 0" in out
    assert "loop lag" in out and "not shedding" in out
    assert "committed directly 1" in out
    # The write may still be kept (released at the guard's next read: no standby to wait for).
    guard = r"failover  [01] writes? not yet on every standby, timeline 1, 0 standbys"
    assert re.search(guard, out), out
    assert err == ""


async def test_json_combines_both_documents(make_api: AppFactory, tokens: Tokens) -> None:
    api = await make_api()
    code, out, _ = await _status("--url", _url(api), "--token", tokens.reader, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["url"] == _url(api)
    assert data["status"]["scope"] == {"tenant": tokens.tenant}  # a reader sees its tenant
    assert data["status"]["breaker"]["state"] == "closed"
    assert data["metrics"]["registry_proxy_journal_depth"] == 0
    assert {"labels": {"reason": "queue-full"}, "value": 0.0} in data["metrics"][
        "registry_proxy_shed_total"
    ]
    assert not any(name.endswith("_bucket") for name in data["metrics"])


async def test_forced_open_then_draining_then_drained(
    make_api: AppFactory, tokens: Tokens, db: asyncpg.Connection
) -> None:
    api = await make_api()
    admin = api.as_token(tokens.admin)
    for i in range(3):
        assert (await api.call("POST", "/v1/agents", agent_body(f"dr-{i}")))[0] == 201
    status, _, _ = await admin.call(
        "POST", "/v1/admin/breaker", {"state": "forced_open", "reason": "drill"}
    )
    assert status == 200
    for i in range(3):
        status, _, _ = await api.call("POST", f"/v1/agents/dr-{i}/heartbeat", {})
        assert status == 202

    # Forced open: the transition with its cause, the journal's depth and age.
    code, out, _ = await _status(
        "--url", _url(api), environ={"REGISTRY_PROXY_STATUS_TOKEN": tokens.admin}
    )
    assert code == 0
    assert "breaker   FORCED OPEN by an operator" in out
    assert "closed -> forced_open: drill" in out
    assert "ago)" in out
    journal = next(line for line in out.splitlines() if line.startswith("journal"))
    depth = app_of(api)[keys.SERVICE].journal.depth
    assert depth >= 3
    assert journal.startswith(f"journal   {depth} acknowledged writes not yet applied, oldest ")
    assert "replay    applied 0, rejected 0, failed 0" in out
    assert "writes    journaled (202) " in out

    # Draining: back to automatic while PostgreSQL holds the rows the replay needs.
    lock = db.transaction()
    await lock.start()
    await db.execute("SELECT 1 FROM agents WHERE tenant_id = $1 FOR UPDATE", tokens.tenant)
    try:
        await admin.call("POST", "/v1/admin/breaker", {"state": "automatic"})
        service = app_of(api)[keys.SERVICE]
        await eventually(lambda: service.replays["runs"] > 0, message="replay started")
        assert service.journal.depth > 0
        code, out, _ = await _status("--url", _url(api), "--token", tokens.admin)
        assert code == 0
        assert "breaker   closed: calls go to PostgreSQL" in out
        assert "forced_open -> closed" in out
        assert "acknowledged writes not yet applied, oldest " in out
        assert "journal   0 acknowledged" not in out
    finally:
        await lock.rollback()

    await eventually(lambda: service.journal.depth == 0, message="journal drained")
    code, out, _ = await _status("--url", _url(api), "--token", tokens.admin)
    assert code == 0
    assert "journal   0 acknowledged writes not yet applied" in out
    applied = next(line for line in out.splitlines() if line.startswith("replay"))
    assert applied.startswith(f"replay    applied {depth}, rejected 0, failed 0")


async def test_without_a_token_metrics_alone(make_api: AppFactory) -> None:
    api = await make_api()
    code, out, err = await _status("--url", _url(api))
    assert code == 0, err
    assert "(from /metrics only)" in out
    assert "breaker   closed" in out
    assert "journal   0 acknowledged writes not yet applied" in out
    assert "note: no token" in out


async def test_the_sidecars_own_token_configuration_is_used(
    make_api: AppFactory, tokens: Tokens
) -> None:
    api = await make_api()
    code, out, _ = await _status(
        "--url", _url(api), environ={"REGISTRY_PROXY_TOKENS": tokens.spec()}
    )
    assert code == 0
    assert "(every tenant)" in out  # the admin token of the list


async def test_a_refused_token_says_so(make_api: AppFactory, tmp_path: Any) -> None:
    api = await make_api()
    bad = tmp_path / "token"
    bad.write_text("not-a-token-of-this-sidecar\n")
    code, out, err = await _status("--url", _url(api), "--token-file", str(bad))
    assert code == 3
    assert out == ""
    assert "refused the token (401" in err and "--token" in err


async def test_not_running() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = await _process("--url", url, "--token", "whatever-token-1234")
    assert code == 2
    assert out == ""
    assert err.strip() == (
        f"registry-proxy: no sidecar answers at {url}: connection refused: "
        "is the sidecar running, and on this port?"
    )


def test_the_default_url_and_the_command_is_wired() -> None:
    assert DEFAULT_URL == "http://127.0.0.1:3580"
    assert _args().url == DEFAULT_URL
    assert main(["status", "--url", "ftp://x"]) == 1


def test_render_shows_what_an_operator_looks_for() -> None:
    from proxy.status_cli import render

    doc = {
        "read_mode": "database",
        "write_fallback": "journal",
        "breaker": {
            "state": "open",
            "retry_after_s": 1.5,
            "transitions": [
                {"from": "closed", "to": "open", "at": 1_000.0, "cause": "5 consecutive failures"}
            ],
        },
        "probe": {"last_error": "ConnectionRefusedError: refused"},
        "retry_budget": {
            "requests": 40,
            "retries": 8,
            "allowed_now": 0,
            "exhausted_count": 3,
            "window_s": 10.0,
        },
        "journal": {
            "depth": 1,
            "oldest_pending_age_s": 75.0,
            "writable": False,
            "disk": {"full": True, "entries_refused": 2},
            "damage": {"quarantined": [{"offset": 0}], "side_files": ["journal.log.damaged-1"]},
            "path": "/j/journal.log",
        },
        "replay": {"runs": 4, "applied": 0, "rejected": 1, "failed": 4, "last_error": "boom"},
        "replica": {"agents": 1, "age_seconds": None, "connected": False, "resyncs": 1},
        "pool": {"connected": False, "last_error": "OSError: down"},
        "overload": {"loop_lag": {"last_ms": 120.0, "max_ms": 300.0, "shedding": True}},
        "failover_guard": {
            "enabled": True,
            "unconfirmed": 3,
            "timeline": 2,
            "standbys": 1,
            "positions_visible": False,
            "promotions": 1,
            "reapplied": 7,
            "last_error": "OSError: gone",
        },
    }
    out = render({"url": "http://x", "status": doc, "metrics": {}}, now=1_075.0)
    for expected in (
        "modes     read_mode database, write_fallback journal",
        "breaker   OPEN: PostgreSQL is failing",
        "next trial in about 1.5 s",
        "1970-01-01 00:16:40Z (75 s ago)  closed -> open: 5 consecutive failures",
        "probe     last error: ConnectionRefusedError: refused",
        "retries   8 for 40 requests in the last 10.0 s, 0 more allowed now; budget spent 3 times",
        "journal   1 acknowledged write not yet applied, oldest 75 s old",
        "NOT WRITABLE",
        "disk full; 2 writes refused",
        "DAMAGE set aside: 1 region quarantined; side files: journal.log.damaged-1",
        "replay    applied 0, rejected 1, failed 4 (in 4 runs)",
        "          last error: boom",
        "replica   never synced, 1 agent, listener NOT connected",
        "resynced 1 time, 0 change notifications",
        "pool      not connected yet",
        "overload  loop lag 120.0 ms now, 300.0 ms at most, SHEDDING",
        "failover  3 writes not yet on every standby, timeline 2, 1 standby, standbys' positions "
        "hidden (grant pg_monitor); 1 promotion seen, 7 writes applied again",
        "          last error: OSError: gone",
    ):
        assert expected in out, (expected, out)


def test_render_says_how_many_windows_the_notifications_were_read_in() -> None:
    from proxy.status_cli import render

    replica = {"agents": 3, "age_seconds": 0.2, "connected": True, "warm": True, "resyncs": 2}
    batched = {**replica, "notifications": 40, "notify_windows": 3}
    out = render({"url": "http://x", "status": {"replica": batched}, "metrics": {}}, now=0.0)
    assert "resynced 2 times, 40 change notifications (read in 3 windows)" in out, out
    one_by_one = {**replica, "notifications": 40, "notify_windows": 0}
    out = render({"url": "http://x", "status": {"replica": one_by_one}, "metrics": {}}, now=0.0)
    assert "resynced 2 times, 40 change notifications\n" in out + "\n", out
    assert "window" not in out, out
