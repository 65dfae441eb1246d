"""A PgBouncer in transaction pooling between the fleet benchmark's sidecars and PostgreSQL.

The topology tests have their own harness (``tests/topology/pgbouncer.py``), tied to pytest (a
missing binary is a skip there); the benchmark needs less of it and must fail plainly instead, so
this is the small launcher it needs. PgBouncer logs in to PostgreSQL as one role of its own
(``server_user``) whatever user its clients name, so its server connections can be told from the
sidecars' direct ones in ``pg_stat_activity`` by ``usename`` alone.

PgBouncer refuses to run as root; under root it runs as the embedded PostgreSQL's unprivileged
user, in a folder that user owns. Its admin console (``SHOW POOLS``) speaks only the simple query
protocol, which asyncpg does not use for queries with results, so it is read through psql.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from proxy.store.embedded import _bin_dir, _open_up, _system_user, free_port

_SEP = "\x1f"
# The SHOW POOLS columns that count server connections, in every state PgBouncer has for them.
SERVER_COLUMNS = ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")


def find_pgbouncer() -> Path:
    """PgBouncer from the virtualenv (``make tools`` puts it there), else from PATH."""
    local = Path(sys.executable).parent / "pgbouncer"
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which("pgbouncer")
    if found:
        return Path(found)
    raise RuntimeError(f"pgbouncer is neither in {local.parent} nor on PATH: run `make tools`")


class Bouncer:
    """One pgbouncer process on a free loopback port in front of a PostgreSQL on loopback."""

    def __init__(
        self,
        root: Path,
        *,
        upstream_port: int,
        database: str,
        server_user: str,
        client_user: str,
        pool_size: int,
        max_client_conn: int,
        login_retry_s: int | None = None,
    ) -> None:
        self.root = root
        self.upstream_port = upstream_port
        self.database = database
        self.server_user = server_user
        self.client_user = client_user
        self.pool_size = pool_size
        self.max_client_conn = max_client_conn
        self.login_retry_s = login_retry_s
        self.host = "127.0.0.1"
        self.port = free_port()
        self._exe = find_pgbouncer()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.client_user}@{self.host}:{self.port}/{self.database}"

    def settings(self) -> dict[str, Any]:
        """What the result file says of this PgBouncer."""
        return {
            "pool_mode": "transaction",
            "default_pool_size": self.pool_size,
            "max_client_conn": self.max_client_conn,
            "server_user": self.server_user,
            # None: PgBouncer's own default (15 s in 1.18).
            "server_login_retry_s": self.login_retry_s,
        }

    def _config(self) -> str:
        server = (
            f"host={self.host} port={self.upstream_port} dbname={self.database} "
            f"user={self.server_user}"
        )
        options: dict[str, str | int] = {
            "listen_addr": self.host,
            "listen_port": self.port,
            # No Unix socket: a test harness (or a system pgbouncer) may use the default one.
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(self.root / "userlist.txt"),
            "admin_users": self.client_user,
            "pool_mode": "transaction",
            "default_pool_size": self.pool_size,
            "max_client_conn": self.max_client_conn,
            "logfile": "",
            "pidfile": "",
            # The harness reads SHOW POOLS twice a second: a line per login would bury the
            # pooler's errors, which are what its log is read for.
            "log_connections": 0,
            "log_disconnections": 0,
        }
        if self.login_retry_s is not None:
            # After a failed login to PostgreSQL, PgBouncer refuses its clients this long
            # before it tries again: after an outage, a floor under the fleet's recovery.
            options["server_login_retry"] = self.login_retry_s
        lines = ["[databases]", f"{self.database} = {server}", "", "[pgbouncer]"]
        lines += [f"{key} = {value}" for key, value in options.items()]
        return "\n".join(lines) + "\n"

    async def start(self, timeout_s: float = 15.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # With trust the password is not checked, but the client's user must be listed.
        (self.root / "userlist.txt").write_text(f'"{self.client_user}" ""\n')
        (self.root / "pgbouncer.ini").write_text(self._config())
        user = _system_user()
        if user:
            pw = pwd.getpwnam(user)
            for path in (self.root, *self.root.iterdir()):
                os.chown(path, pw.pw_uid, pw.pw_gid)
            _open_up(self.root)
            # The unprivileged user must reach the program and what its wrapper script runs.
            _open_up(self._exe.parent)
            _open_up(self._exe.resolve().parent)
        with (self.root / "pgbouncer.log").open("ab") as log:
            self._proc = subprocess.Popen(
                [str(self._exe), str(self.root / "pgbouncer.ini")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd="/",
                user=user,
                start_new_session=True,
            )
        end = time.monotonic() + timeout_s
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited at start:\n{self.log_tail()}")
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                if time.monotonic() > end:
                    raise RuntimeError(f"pgbouncer not listening:\n{self.log_tail()}") from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        # SIGTERM is PgBouncer 1.18's immediate shutdown (SIGINT would wait for its clients).
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return (self.root / "pgbouncer.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    async def show(self, what: str) -> list[dict[str, str]]:
        """``SHOW <what>`` on the admin console, one dict a row."""
        proc = await asyncio.create_subprocess_exec(
            str(_bin_dir() / "psql"),
            "-X",
            "--no-align",
            f"--field-separator={_SEP}",
            "--pset=footer=off",
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-U",
            self.client_user,
            "-d",
            "pgbouncer",
            "-c",
            f"SHOW {what}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"SHOW {what}: {err.decode(errors='replace').strip()}")
        lines = out.decode().splitlines()
        if not lines:
            return []
        header = lines[0].split(_SEP)
        return [dict(zip(header, line.split(_SEP), strict=True)) for line in lines[1:]]

    async def pools(self) -> dict[str, int]:
        """Our database's SHOW POOLS figures summed over its users: server connections by
        state, their total (`servers`), and clients active and waiting."""
        out = dict.fromkeys((*SERVER_COLUMNS, "cl_active", "cl_waiting"), 0)
        for row in await self.show("POOLS"):
            if row.get("database") != self.database:
                continue
            for key in out:
                out[key] += int(row.get(key) or 0)
        out["servers"] = sum(out[k] for k in SERVER_COLUMNS)
        return out
