"""Helpers to run the bundled Toxiproxy-compatible server from tests.

* :func:`toxiproxy_process` starts ``python -m chaos.toxiproxy`` on a free loopback port, waits
  until ``/version`` answers and yields the base URL (``http://127.0.0.1:PORT``); the process is
  stopped on exit. This is what a chaos suite driving the sync ``toxiproxy-python`` client wants.
* :func:`serve` runs the server inside the current event loop and yields the
  :class:`~chaos.toxiproxy.server.ToxiproxyServer` (``.url``, ``.collection``).
* :func:`toxiproxy_thread` runs it in-process on a background thread's event loop and yields the
  base URL, for synchronous tests that do not want a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path

from chaos.toxiproxy.api import HANDLER_TIMEOUT
from chaos.toxiproxy.server import ToxiproxyServer

__all__ = [
    "ToxiproxyStartError",
    "free_port",
    "serve",
    "toxiproxy_process",
    "toxiproxy_thread",
    "wait_for_version",
]

_REPO_ROOT = Path(__file__).resolve().parents[2]


class ToxiproxyStartError(RuntimeError):
    """The server did not come up; the message carries the end of its output."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _get_version(url: str, timeout: float) -> str | None:
    # No proxy: the API is on loopback and HTTP_PROXY must not capture it.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url}/version", timeout=timeout) as response:
            body: bytes = response.read()
            return body.decode("utf-8")
    except (urllib.error.URLError, OSError):
        return None


def wait_for_version(
    url: str, timeout: float = 15.0, process: subprocess.Popen[bytes] | None = None
) -> str:
    """Poll ``GET {url}/version`` until it answers; return the body. Raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        body = _get_version(url, timeout=1.0)
        if body is not None:
            return body
        if process is not None and process.poll() is not None:
            raise ToxiproxyStartError(f"server exited with status {process.returncode}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{url}/version did not answer within {timeout} s")
        time.sleep(0.05)


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


@contextlib.contextmanager
def toxiproxy_process(
    host: str = "127.0.0.1",
    port: int | None = None,
    *,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    startup_timeout: float = 15.0,
    python: str = sys.executable,
) -> Iterator[str]:
    """Run ``python -m chaos.toxiproxy`` and yield its base URL once ``/version`` answers.

    ``port`` defaults to a free port; ``extra_args`` are passed on (``-config``, ``-seed``,
    ``-proxy-metrics``...); ``env`` is added to the environment (``LOG_LEVEL``...).
    """
    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        chosen = port if port is not None else free_port(host)
        url = f"http://{host}:{chosen}"
        child_env = dict(os.environ)
        child_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_REPO_ROOT), child_env.get("PYTHONPATH", "")) if p
        )
        child_env.update(env or {})
        command = [python, "-m", "chaos.toxiproxy", "-host", host, "-port", str(chosen)]
        command += list(extra_args)
        with tempfile.NamedTemporaryFile(prefix="toxiproxy-", suffix=".log", delete=False) as log:
            log_path = Path(log.name)
            process = subprocess.Popen(  # noqa: S603 - fixed interpreter and module
                command, stdout=log, stderr=subprocess.STDOUT, env=child_env
            )
        try:
            try:
                wait_for_version(url, startup_timeout, process)
            except (ToxiproxyStartError, TimeoutError) as exc:
                if attempt + 1 < attempts and process.poll() is not None:
                    # Most likely the free port was taken in between: try another one.
                    continue
                raise ToxiproxyStartError(
                    f"{exc}\n--- server output ---\n{_tail(log_path)}"
                ) from None
            yield url
            return
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            log_path.unlink(missing_ok=True)
    raise ToxiproxyStartError("could not start the server")


@contextlib.asynccontextmanager
async def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    seed: int | None = None,
    proxy_metrics: bool = False,
    runtime_metrics: bool = False,
    handler_timeout: float = HANDLER_TIMEOUT,
) -> AsyncIterator[ToxiproxyServer]:
    """Run the server in the current event loop; yields it started (see ``.url``)."""
    server = ToxiproxyServer(
        seed=seed,
        proxy_metrics=proxy_metrics,
        runtime_metrics=runtime_metrics,
        handler_timeout=handler_timeout,
    )
    await server.start(host, port)
    try:
        yield server
    finally:
        await server.close()


@contextlib.contextmanager
def toxiproxy_thread(
    host: str = "127.0.0.1", port: int = 0, *, seed: int | None = None
) -> Iterator[str]:
    """Run the server on a background thread's event loop; yields the base URL."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop: asyncio.Event | None = None
    server = ToxiproxyServer(seed=seed)
    failure: list[BaseException] = []

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        try:
            await server.start(host, port)
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            return
        ready.set()
        try:
            await stop.wait()
        finally:
            await server.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    ready.wait()
    try:
        if failure:
            raise ToxiproxyStartError(str(failure[0]))
        yield server.url
    finally:
        if stop is not None:
            loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        loop.close()
