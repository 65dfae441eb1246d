"""Access lines: only for errors by default; with log.access on, one per request."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from proxy.observability.logging import configure
from tests.conftest import AppFactory


@pytest.fixture
def info_logs() -> Iterator[None]:
    configure(level="info", fmt="json")
    yield
    configure(level="warning", fmt="json")


@pytest.mark.usefixtures("info_logs")
@pytest.mark.parametrize("access", [True, False, None])
async def test_access_lines(make_api: AppFactory, access: bool | None) -> None:
    api = await (make_api() if access is None else make_api(log={"access": access}))
    with capture_logs() as lines:
        assert (await api.call("GET", "/v1/stats"))[0] == 200
        assert (await api.call("GET", "/v1/agents/missing"))[0] == 404
    requests = [line for line in lines if line["event"] == "request"]
    statuses = [line["status"] for line in requests]
    assert statuses == ([200, 404] if access else [404])
    for line in requests:
        assert {"request_id", "tenant", "route", "status", "duration_ms", "source"} <= set(line)
