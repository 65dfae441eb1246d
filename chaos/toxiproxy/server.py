"""The whole server in one object: proxies, metrics and the HTTP API on a bound socket.

Used by ``__main__`` for the command line and by :mod:`chaos.toxiproxy.testing` to run the server
inside a test's event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sys
import time
from pathlib import Path

from aiohttp import web

from chaos.toxiproxy import VERSION
from chaos.toxiproxy.api import HANDLER_TIMEOUT, ApiServer
from chaos.toxiproxy.collection import PopulateError, ProxyCollection
from chaos.toxiproxy.metrics import Metrics
from chaos.toxiproxy.netaddr import bind_listener

__all__ = ["JsonLogFormatter", "ToxiproxyServer", "configure_logging"]

_log = logging.getLogger("chaos.toxiproxy")


def join_host_port(host: str, port: str) -> str:
    """Go's ``net.JoinHostPort``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ToxiproxyServer:
    """A running (or not yet started) server.

    ``seed`` seeds the random source of toxicity draws, jitter and slicing, so tests can be
    repeatable; ``handler_timeout`` is the per-request limit (25 s in Toxiproxy).
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        proxy_metrics: bool = False,
        runtime_metrics: bool = False,
        handler_timeout: float = HANDLER_TIMEOUT,
        version: str = VERSION,
    ) -> None:
        self.rng = random.Random(seed)
        self.metrics = Metrics(proxy_metrics=proxy_metrics, runtime_metrics=runtime_metrics)
        self.collection = ProxyCollection(self.rng, on_link_done=self.metrics.link_done)
        self.api = ApiServer(
            self.collection, self.metrics, version=version, handler_timeout=handler_timeout
        )
        self.address = ""
        self.host = ""
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """Base URL of the API (loopback when the server listens on a wildcard address)."""
        host = self.host
        if host in ("", "::", "0.0.0.0"):  # noqa: S104 - naming the wildcard, not binding it
            host = "127.0.0.1"
        return f"http://{join_host_port(host, str(self.port))}"

    async def start(self, host: str = "localhost", port: int | str = 8474) -> None:
        """Bind the API like Go's ``http.ListenAndServe(host:port)`` and start serving.

        Raises AddrError with Go's ``listen tcp ...`` message when the address cannot be bound.
        """
        sock, bound = await bind_listener(join_host_port(host, str(port)))
        host_part, _, port_part = bound.rpartition(":")
        self.address = bound
        self.host = host_part.strip("[]")
        self.port = int(port_part)
        # Go's graceful shutdown waits up to 30 s for requests in flight.
        runner = web.AppRunner(
            self.api.make_app(),
            access_log=None,
            handle_signals=False,
            keepalive_timeout=60,
            shutdown_timeout=30.0,
        )
        await runner.setup()
        site = web.SockSite(runner, sock)
        await site.start()
        self._runner = runner
        _log.info(
            "Starting Toxiproxy HTTP server",
            extra={"fields": {"host": host, "port": str(port), "version": VERSION}},
        )

    async def populate_file(self, path: str) -> None:
        """Load a ``-config`` file (a /populate body); errors are logged, never raised."""
        try:
            body = await asyncio.to_thread(Path(path).read_bytes)
        except OSError as exc:
            _log.error(
                "Error reading config file", extra={"fields": {"config": path, "error": str(exc)}}
            )
            return
        try:
            proxies = await self.collection.populate_json(body)
        except PopulateError as exc:
            _log.error(
                "Failed to populate proxies from file",
                extra={"fields": {"config": path, "error": exc.error.message}},
            )
            return
        _log.info(
            "Populated proxies from file",
            extra={"fields": {"config": path, "proxies": len(proxies)}},
        )

    async def close(self) -> None:
        """Stop the HTTP API (finishing requests in flight), then every proxy."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        await self.api.close()
        await self.collection.close()


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, in the spirit of Toxiproxy's zerolog output."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "level": record.levelname.lower().replace("warning", "warn"),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        entry["message"] = record.getMessage()
        return json.dumps(entry, default=str, separators=(",", ":"))


_LEVELS = {
    "panic": logging.CRITICAL,
    "fatal": logging.CRITICAL,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": logging.DEBUG,
}


def configure_logging(level: str | None) -> None:
    """JSON logs to stdout at ``LOG_LEVEL`` (panic/fatal/error/warn/info/debug/trace)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonLogFormatter())
    logger = logging.getLogger("chaos.toxiproxy")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(_LEVELS.get((level or "info").lower(), logging.INFO))
