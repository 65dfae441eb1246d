"""A PgBouncer in front of a PostgreSQL, the way production fleets pool their connections.

Many deployments put PgBouncer in transaction pooling between their services and PostgreSQL: a
client holds a server connection only for the length of a transaction, so session state (named
prepared statements, session advisory locks, LISTEN, startup parameters) does not follow the
client. The sidecar must work behind one, so the tests need one: this harness starts Debian's
pgbouncer (installed by `make tools`) on a free loopback port in front of a given DSN.

Clients are let in without a password (`auth_type = trust`, loopback only); PgBouncer logs in to
PostgreSQL as the upstream DSN's user, with its password if it has one. The admin console
(`SHOW POOLS`, `SHOW STATS`) speaks only the simple query protocol, which asyncpg does not use
for queries with results, so `show()` asks it through the wheel's psql.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

from proxy.store.embedded import free_port
from tests.topology.support import (
    Child,
    find_binary,
    make_root,
    postgres_bin_dir,
    wait_until,
)

ADMIN_DB = "pgbouncer"
_FIELD_SEP = "\x1f"


def _quote(value: str) -> str:
    """A value of a [databases] connection string, quoted as libpq-style strings are."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class PgBouncer:
    """One pgbouncer process in front of `upstream` (a postgresql:// DSN).

    `dsn` reaches the upstream database through the pool, with the upstream's user; `show()`
    reads the admin console. Use as `async with PgBouncer(dsn) as bouncer:`.
    """

    def __init__(
        self,
        upstream: str,
        *,
        pool_mode: str = "transaction",
        default_pool_size: int = 2,
        max_client_conn: int = 100,
        # asyncpg sends only user, database and client_encoding (tracked by PgBouncer), so by
        # default nothing is ignored: an ignored parameter is dropped, never reaches PostgreSQL.
        ignore_startup_parameters: Sequence[str] = (),
        settings: Mapping[str, str | int] | None = None,
    ) -> None:
        url = urlsplit(upstream)
        if url.scheme not in ("postgres", "postgresql") or not url.hostname:
            raise ValueError(f"not a postgresql:// DSN with a host: {upstream!r}")
        self.user = unquote(url.username or "postgres")
        self.database = unquote(url.path.lstrip("/") or self.user)
        self._upstream_host = url.hostname
        self._upstream_port = url.port or 5432
        self._upstream_password = unquote(url.password) if url.password else None
        self.pool_mode = pool_mode
        self.default_pool_size = default_pool_size
        self.max_client_conn = max_client_conn
        self.ignore_startup_parameters = tuple(ignore_startup_parameters)
        self.settings = dict(settings or {})
        self.host = "127.0.0.1"
        self.port = free_port()
        self._exe = find_binary("pgbouncer")
        self._psql = postgres_bin_dir() / "psql"
        self.root: Path | None = None
        self._child: Child | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    def _config(self, root: Path) -> str:
        server = {
            "host": self._upstream_host,
            "port": str(self._upstream_port),
            "dbname": self.database,
            "user": self.user,
        }
        if self._upstream_password is not None:
            server["password"] = self._upstream_password
        connstr = " ".join(f"{key}={_quote(value)}" for key, value in server.items())
        options: dict[str, str | int] = {
            "listen_addr": self.host,
            "listen_port": self.port,
            # No Unix socket: a second harness (or a system pgbouncer) may use the default one.
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(root / "userlist.txt"),
            "admin_users": self.user,
            "pool_mode": self.pool_mode,
            "default_pool_size": self.default_pool_size,
            "max_client_conn": self.max_client_conn,
            "ignore_startup_parameters": ",".join(self.ignore_startup_parameters),
            # The log goes to stderr, which the harness keeps in root/pgbouncer.log.
            "logfile": "",
            "pidfile": "",
            **self.settings,
        }
        lines = ["[databases]", f"{self.database} = {connstr}", "", "[pgbouncer]"]
        lines += [f"{key} = {value}" for key, value in options.items()]
        return "\n".join(lines) + "\n"

    async def start(self, timeout: float = 15) -> None:
        """Start it (again, after `stop`: same port, fresh files)."""
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
        root = make_root("registry-proxy-pgbouncer-")
        self.root = root
        # With trust the password column is not checked, but the user must be listed.
        (root / "userlist.txt").write_text(f'"{self.user}" ""\n')
        (root / "pgbouncer.ini").write_text(self._config(root))
        child = Child("pgbouncer", [self._exe, root / "pgbouncer.ini"], root / "pgbouncer.log")
        self._child = child

        async def listening() -> bool:
            if not child.running():
                raise RuntimeError(f"pgbouncer exited at start:\n{child.tail()}")
            _, writer = await asyncio.open_connection(self.host, self.port)
            writer.close()
            await writer.wait_closed()
            return True

        await wait_until("pgbouncer listening", listening, timeout, details=child.tail)

    async def stop(self) -> None:
        if self._child is not None:
            # SIGTERM is PgBouncer 1.18's immediate shutdown (SIGINT would wait for clients).
            await self._child.stop(signal.SIGTERM)
            self._child = None

    def log(self) -> str:
        return self._child.tail(200) if self._child else ""

    async def show(self, what: str) -> list[dict[str, str]]:
        """`SHOW <what>` on the admin console (POOLS, STATS, SERVERS, CLIENTS, VERSION, ...)."""
        proc = await asyncio.create_subprocess_exec(
            str(self._psql),
            "-X",
            "--no-align",
            f"--field-separator={_FIELD_SEP}",
            "--pset=footer=off",
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-U",
            self.user,
            "-d",
            ADMIN_DB,
            "-c",
            f"SHOW {what}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"SHOW {what} failed: {err.decode(errors='replace')}")
        lines = out.decode().splitlines()
        if not lines:
            return []
        header = lines[0].split(_FIELD_SEP)
        return [dict(zip(header, line.split(_FIELD_SEP), strict=True)) for line in lines[1:]]

    async def pool(self) -> dict[str, str]:
        """The SHOW POOLS row of our database and user."""
        for row in await self.show("POOLS"):
            if row["database"] == self.database and row["user"] == self.user:
                return row
        raise LookupError(f"no pool for {self.user}@{self.database} yet")

    async def stats(self) -> dict[str, str]:
        """The SHOW STATS row of our database."""
        for row in await self.show("STATS"):
            if row["database"] == self.database:
                return row
        raise LookupError(f"no stats for {self.database} yet")

    async def __aenter__(self) -> PgBouncer:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
