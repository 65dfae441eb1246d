"""A Toxiproxy-compatible chaos server: Toxiproxy v2.12.0's HTTP API and toxics, in asyncio.

It is hand-written because no Python library implements a Toxiproxy *server* (the PyPI packages are
clients). The chaos suite runs it when no real ``toxiproxy-server`` is available, so it has to be a
drop-in: same endpoints, bodies, status codes, error strings and connection behaviour, as the
real server's clients see them; tests/toxiproxy checks that, and chaos/README.md lists the few
deliberate differences.

Start it with ``python -m chaos.toxiproxy --host 127.0.0.1 --port 8474``, or from tests with
:mod:`chaos.toxiproxy.testing`.
"""

from __future__ import annotations

__all__ = ["VERSION"]

# The Toxiproxy release whose API this server reproduces; reported by /version and -version.
VERSION = "2.12.0"
