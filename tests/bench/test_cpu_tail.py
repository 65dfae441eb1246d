"""`python -m bench.cpu_tail`: the same-work app with CPU added to each write, next to the
sidecar; the added CPU is really spent, and the run works end to end."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from bench.baselines import Writes, with_extra_cpu
from bench.cpu_tail import _extras, medians

ROOT = Path(__file__).resolve().parents[2]


async def test_each_write_spends_the_extra_cpu_and_answers_as_before() -> None:
    calls: list[str] = []

    async def register(request: web.Request) -> web.Response:
        calls.append("register")
        return web.Response(status=201)

    async def performance(request: web.Request) -> web.Response:
        calls.append("performance")
        return web.Response(status=202)

    costly = with_extra_cpu(Writes(register=register, performance=performance), 20_000)
    request: web.Request = None  # type: ignore[assignment]  # the handlers never read it
    for handler, status in ((costly.register, 201), (costly.performance, 202)):
        before = time.thread_time()
        response = await handler(request)
        assert time.thread_time() - before >= 0.02
        assert response.status == status
    assert calls == ["register", "performance"]


def test_medians_are_per_target_over_its_rounds() -> None:
    def one(target: str, p99: float, cpu: float) -> dict[str, object]:
        return {
            "target": target,
            "p50_ms": 1.0,
            "p90_ms": 2.0,
            "p99_ms": p99,
            "server_cpu_us_per_request": cpu,
        }

    rounds = [one("a", 3.0, 400), one("b", 9.0, 500), one("a", 5.0, 420), one("a", 40.0, 390)]
    assert medians(rounds) == {
        "a": {"p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 5.0, "server_cpu_us_per_request": 400},
        "b": {"p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 9.0, "server_cpu_us_per_request": 500},
    }


def test_extra_cpu_values_are_a_list_of_non_negative_microseconds() -> None:
    assert _extras("0, 60,120,60") == [0.0, 60.0, 120.0]
    for bad in ("", "-5", "10,-1"):
        with pytest.raises(Exception, match="microseconds"):
            _extras(bad)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_cpu_tail_runs_end_to_end_and_the_added_cpu_shows(tmp_path: Path) -> None:
    out = tmp_path / "cputail.json"
    cmd = [sys.executable, "-m", "bench.cpu_tail", "--rounds", "1", "--rate", "100"]
    cmd += ["--duration", "1", "--saturate", "0.3", "--extra-cpu-us", "0,5000"]
    cmd += ["--out", str(out)]
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=140, capture_output=True)
    doc = orjson.loads(out.read_bytes())
    assert [r["target"] for r in doc["rounds"]] == [
        "same-work-1rt+0us",
        "same-work-1rt+5000us",
        "sidecar-database",
    ]
    for r in doc["rounds"]:
        assert r["statuses"] == {"201": 100} and r["errors"] == 0
    for m in doc["medians"].values():
        # PostgreSQL works for every write, and at least one sidecar hears each of them.
        assert m["postgres_cpu_us_per_request"] > 0
        assert m["listening_cpu_us_per_request"] > 0
    cpu = {t: m["server_cpu_us_per_request"] for t, m in doc["medians"].items()}
    # 5 ms more per write, 110 writes: half of it is far above what separates two runs.
    assert cpu["same-work-1rt+5000us"] - cpu["same-work-1rt+0us"] > 2_500


def test_a_handler_spinning_does_not_yield_to_the_loop() -> None:
    # The extra CPU is on the request path: nothing else on the loop runs meanwhile.
    async def main() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        async def answer(request: web.Request) -> web.Response:
            return web.Response(status=201)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        seen = ticks
        costly = with_extra_cpu(Writes(register=answer, performance=answer), 10_000)
        await costly.register(None)  # type: ignore[arg-type]
        spun = ticks - seen
        task.cancel()
        return spun

    assert asyncio.run(main()) == 0
