"""The harness's own HTTP client calls: setting up, seeding and reading a server's state.

aiohttp is imported inside the functions, not at module level, because the load generator
processes import ``bench`` modules and never need it; measured traffic goes through the load
generator, never through here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson


async def http(
    url: str,
    *,
    method: str = "GET",
    token: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 5.0,
    session: Any = None,
) -> tuple[int, Any]:
    """One request; (status, decoded JSON body or text or None). Raises OSError on no answer."""
    import aiohttp

    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    own = session is None
    s = session or aiohttp.ClientSession()
    try:
        async with s.request(
            method,
            url,
            data=orjson.dumps(body) if body is not None else None,
            headers={**h, "Content-Type": "application/json"} if body is not None else h,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as r:
            raw = await r.read()
            ctype = r.headers.get("Content-Type", "")
            if raw and "json" in ctype:
                return r.status, orjson.loads(raw)
            return r.status, raw.decode(errors="replace") if raw else None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise OSError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
    finally:
        if own:
            await s.close()


async def bounded_gather(
    jobs: list[Callable[[], Awaitable[Any]]], concurrency: int, timeout_s: float
) -> list[Any]:
    sem = asyncio.Semaphore(concurrency)

    async def one(job: Callable[[], Awaitable[Any]]) -> Any:
        async with sem:
            return await job()

    async with asyncio.timeout(timeout_s):
        return await asyncio.gather(*(one(j) for j in jobs))
