"""What the log says during an outage and under deadlines: a few lines that help, no flood.

A minute without PostgreSQL under light load, at the default level (info, JSON): the breaker's
transitions and each repeating condition's entry and exit, not a line per retry, no traceback,
and no background line carrying the id of some earlier request.
"""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from proxy.app import SYNC
from proxy.http import keys
from proxy.observability.conditions import POOL_FLOOR
from proxy.observability.logging import configure
from proxy.store.embedded import EmbeddedPostgres
from tests.conftest import AppFactory, agent_body, app_of, eventually

OUTAGE_S = 60.0

# Lines of work no request asked for: they never carry a request id.
BACKGROUND = {
    "replica listener lost",
    "replica listener back",
    "replica snapshot written",
    "database pool cannot restore its minimum connections",
    "database pool back at its minimum connections",
    "journal drained",
}


@pytest.fixture
def own_pg() -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres()
    pg.start()
    yield pg
    pg.cleanup()


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    POOL_FLOOR.ended()  # whatever an earlier test left behind
    stream = io.StringIO()
    configure(level="info", fmt="json", stream=stream)
    # The test server logs every request through aiohttp's access logger, which `serve` turns
    # off (the sidecar writes its own access lines, for errors only by default).
    access = logging.getLogger("aiohttp.access")
    level = access.level
    access.setLevel(logging.WARNING)
    yield stream
    access.setLevel(level)
    configure(level="warning", fmt="json")


def _parse(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = stream.getvalue().splitlines()
    parsed = [orjson.loads(line) for line in lines]
    assert all(isinstance(line, dict) for line in parsed), lines
    return parsed


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_a_one_minute_outage_is_a_few_lines_without_tracebacks(
    own_pg: EmbeddedPostgres, make_api: AppFactory, log_stream: io.StringIO
) -> None:
    api = await make_api(own_pg.dsn)
    agents = [f"quiet-{i}" for i in range(5)]
    for agent_id in agents:
        assert (await api.call("POST", "/v1/agents", agent_body(agent_id)))[0] == 201
    service = app_of(api)[keys.SERVICE]

    await asyncio.to_thread(own_pg.stop)
    end = time.monotonic() + OUTAGE_S
    answered: dict[int, int] = {}
    i = 0
    while time.monotonic() < end:  # light load: a read and a write every half second
        agent_id = agents[i % len(agents)]
        for method, path, body in (
            ("GET", f"/v1/agents/{agent_id}", None),
            ("POST", f"/v1/agents/{agent_id}/heartbeat", {}),
        ):
            status, _, _ = await api.call(method, path, body, headers={"X-Request-ID": f"q-{i}"})
            answered[status] = answered.get(status, 0) + 1
        i += 1
        await asyncio.sleep(0.5)
    assert set(answered) <= {200, 202}, answered

    await asyncio.to_thread(own_pg.start)
    sync = app_of(api)[SYNC]
    await eventually(
        lambda: (
            service.journal.depth == 0
            and service.breaker.state.value == "closed"
            and service.replica.connected
        ),
        timeout=60,
        interval=0.2,
        message="recovered",
    )
    await eventually(lambda: sync.synced.is_set(), timeout=10)
    await asyncio.sleep(1)  # whatever recovery logs last
    gc.collect()

    lines = _parse(log_stream)
    events = [line["event"] for line in lines]
    text = "\n".join(f"{line.get('level')} {line['event']}" for line in lines)
    assert len(lines) < 30, text
    assert not [line for line in lines if "exception" in line or "Traceback" in str(line)], text
    assert "breaker transition" in events, text
    assert events.count("replica listener lost") <= 2, text  # its entry, one summary at most
    assert events.count("replica listener back") == 1, text
    assert events.count("database pool cannot restore its minimum connections") <= 2, text
    assert "Future exception was never retrieved" not in "\n".join(events), text
    leaked = [line for line in lines if line["event"] in BACKGROUND and "request_id" in line]
    assert not leaked, leaked


async def test_deadlines_cut_short_leave_no_asyncio_error(
    make_api: AppFactory, log_stream: io.StringIO
) -> None:
    """Connections the sidecar terminates and reopens under a 1 ms deadline: asyncpg's TLS
    negotiation is abandoned on the way, which asyncio would report at ERROR."""
    api = await make_api()
    assert (await api.call("POST", "/v1/agents", agent_body("dl-0")))[0] == 201
    for n in range(100):
        path, body = (
            ("/v1/agents/dl-0/heartbeat", {}) if n % 2 else ("/v1/agents?task_type=code", None)
        )
        await api.call(
            "POST" if body is not None else "GET", path, body, headers={"X-Request-Timeout": "1"}
        )
    await asyncio.sleep(0.5)
    gc.collect()
    await asyncio.sleep(0)
    lines = _parse(log_stream)
    assert not [line for line in lines if line.get("logger") == "asyncio"], lines
    assert not [line for line in lines if "exception" in line], lines
