"""Command line: ``python -m chaos.toxiproxy [-host H] [-port P] [-config FILE] ...``.

Flags are those of ``toxiproxy-server`` and are accepted with one dash (Go style) or two:
``-host``/``--host`` (default ``localhost``), ``-port``/``--port`` (8474), ``-config`` (a JSON
array as for /populate, loaded at start-up; errors are only logged), ``-seed`` (seeds the random
source; the real server ignores it), ``-proxy-metrics``, ``-runtime-metrics`` and ``-version``.
Logs are JSON lines on stdout at ``LOG_LEVEL``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence

from chaos.toxiproxy import VERSION
from chaos.toxiproxy.netaddr import AddrError
from chaos.toxiproxy.server import ToxiproxyServer, configure_logging

__all__ = ["main"]

_TRUE = {"1", "t", "true", "T", "TRUE", "True"}
_FALSE = {"0", "f", "false", "F", "FALSE", "False"}


def _go_bool(text: str) -> bool:
    # Go's flag package accepts -flag, -flag=true and -flag=false for booleans.
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value {text!r}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="toxiproxy-server",
        description=f"Toxiproxy-compatible chaos server (API of Toxiproxy {VERSION}).",
        allow_abbrev=False,
    )
    parser.add_argument(
        "-host", "--host", default="localhost", help="host for the API to listen on"
    )
    parser.add_argument("-port", "--port", default="8474", help="port for the API to listen on")
    parser.add_argument("-config", "--config", default="", help="JSON file of proxies to create")
    parser.add_argument("-seed", "--seed", type=int, default=None, help="seed for randomness")
    for flag, text in (
        ("proxy-metrics", "enable the toxiproxy_proxy_* counters on /metrics"),
        ("runtime-metrics", "enable process and runtime metrics on /metrics"),
        ("version", "print the version and exit"),
    ):
        parser.add_argument(
            f"-{flag}",
            f"--{flag}",
            nargs="?",
            const=True,
            default=False,
            type=_go_bool,
            help=text,
        )
    return parser


async def _serve(args: argparse.Namespace) -> int:
    server = ToxiproxyServer(
        seed=args.seed,
        proxy_metrics=bool(args.proxy_metrics),
        runtime_metrics=bool(args.runtime_metrics),
    )
    if args.config:
        await server.populate_file(args.config)
    try:
        await server.start(args.host, args.port)
    except AddrError as exc:
        print(f"toxiproxy-server: {exc}", file=sys.stderr)
        await server.close()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.version:
        print(f"toxiproxy-server version {VERSION}")
        return 0
    configure_logging(os.environ.get("LOG_LEVEL"))
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_serve(args))
    # uvloop makes the pass-through cheaper; a dependency except on Windows, which it lacks.
    return uvloop.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
