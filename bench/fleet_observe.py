"""What PostgreSQL (and PgBouncer) see of a fleet of sidecars: backends, transactions, statements.

A fleet's cost to its database is counted on the database's side, not summed from the sidecars'
own figures: ``pg_stat_activity`` for the backends, ``pg_stat_database`` for transactions and
``pg_stat_statements`` for statements. Each connection is told apart by who opened it: the
harness names every sidecar DSN with an ``application_name`` (``fleet-s03-pool``,
``fleet-s03-direct``), PgBouncer logs in as a role of its own, and the harness itself as another,
whose statements are left out of the counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

POOL_ROLE = "fleet_pgbouncer"
OBSERVER_ROLE = "fleet_observer"

_BACKENDS = (
    "SELECT usename, application_name, coalesce(state, '') AS state FROM pg_stat_activity "
    "WHERE backend_type = 'client backend' AND usename IS DISTINCT FROM $1"
)
# dealloc: statements pg_stat_statements evicted for room (their counts start again), which
# would make a window's statement count a lower bound.
_XACTS = (
    "SELECT xact_commit + xact_rollback AS xacts, xact_rollback, deadlocks, "
    "(SELECT dealloc FROM pg_stat_statements_info) AS dealloc FROM pg_stat_database "
    "WHERE datname = current_database()"
)
_STATEMENTS = (
    "SELECT s.queryid, s.toplevel, r.rolname, s.calls, "
    "left(regexp_replace(s.query, '\\s+', ' ', 'g'), 90) AS query "
    "FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid "
    "WHERE r.rolname <> $1"
)


def kind_of(user: str, application: str) -> tuple[str, str | None]:
    """The kind of a backend and the sidecar it belongs to (None: PgBouncer's or another's)."""
    if application.startswith("fleet-") and application.endswith(("-pool", "-direct")):
        name, _, kind = application.removeprefix("fleet-").rpartition("-")
        return f"sidecar {kind}", name
    if user == POOL_ROLE:
        return "pgbouncer", None
    return "other", None


async def prepare(dsn: str) -> dict[str, Any]:
    """The roles the harness tells connections apart by, and pg_stat_statements (preloaded by
    the harness before PostgreSQL started); the server's version and connection limit."""
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        for role in (POOL_ROLE, OBSERVER_ROLE):
            # Superusers, as the sidecar's own user is in the other benchmarks: the fleet's
            # connections must differ by name only, not by what they may do.
            await conn.execute(f"CREATE ROLE {role} LOGIN SUPERUSER")
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        return {
            "version": await conn.fetchval("SHOW server_version"),
            "max_connections": int(await conn.fetchval("SHOW max_connections")),
        }
    finally:
        await conn.close()


class Observer:
    """One connection as OBSERVER_ROLE, opened again whenever PostgreSQL comes back."""

    def __init__(self, host: str, port: int, database: str) -> None:
        self.dsn = f"postgresql://{OBSERVER_ROLE}@{host}:{port}/{database}"
        self._conn: Any = None
        # The sampler and the phase counters share the connection, one query at a time.
        self._lock = asyncio.Lock()
        # Transactions of our own, taken off pg_stat_database's count (each query is one).
        self.own_xacts = 0

    async def _connection(self) -> Any:
        import asyncpg

        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(
                self.dsn, timeout=2, server_settings={"application_name": "fleet-observer"}
            )
        return self._conn

    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        async with self._lock:
            conn = await self._connection()
            try:
                self.own_xacts += 1
                return list(await conn.fetch(query, *args, timeout=5))
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.terminate()
                self._conn = None
                raise

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    async def backends(self) -> dict[str, Any]:
        """Client backends (the harness's own left out): total, by "kind/state", per sidecar."""
        by_kind: Counter[str] = Counter()
        per_sidecar: Counter[str] = Counter()
        for r in await self._fetch(_BACKENDS, OBSERVER_ROLE):
            kind, name = kind_of(r["usename"] or "", r["application_name"] or "")
            by_kind[f"{kind}/{r['state'] or 'starting'}"] += 1
            if name is not None:
                per_sidecar[name] += 1
        return {
            "total": sum(by_kind.values()),
            "by_kind_state": dict(sorted(by_kind.items())),
            "per_sidecar": dict(sorted(per_sidecar.items())),
        }

    async def counters(self) -> dict[str, Any]:
        """Cumulative transactions of the database and statements by the fleet, at a moment."""
        # Ours up to this reading, which itself is not in the count it reads.
        own = self.own_xacts
        db = (await self._fetch(_XACTS))[0]
        at = time.monotonic()
        # One entry per role and query (and top level or not): PgBouncer's "select 1" and a
        # sidecar's "SELECT 1" share a queryid under different roles.
        statements = {
            (r["rolname"], r["queryid"], r["toplevel"]): (r["rolname"], r["query"], int(r["calls"]))
            for r in await self._fetch(_STATEMENTS, OBSERVER_ROLE)
        }
        return {
            "at": at,
            "xacts": int(db["xacts"]),
            "rollbacks": int(db["xact_rollback"]),
            "deadlocks": int(db["deadlocks"]),
            "evicted": int(db["dealloc"]),
            "own_xacts": own,
            "statements": statements,
        }


def rates(before: dict[str, Any], after: dict[str, Any], sidecars: int) -> dict[str, Any]:
    """Transactions and statements per second between two `counters`, for the fleet and per
    sidecar, and the statements that made them (most called first)."""
    seconds = after["at"] - before["at"]
    # Our own transactions in between (the reading of `before` on) are not the fleet's. A
    # backend reports its counts at most once a second, and an idle one within ten: over a short
    # window the figure is rough.
    xacts = after["xacts"] - before["xacts"] - (after["own_xacts"] - before["own_xacts"])
    calls: Counter[tuple[str, str]] = Counter()
    for qid, (role, query, n) in after["statements"].items():
        delta = n - before["statements"].get(qid, (role, query, 0))[2]
        if delta > 0:
            calls[(role, query)] += delta
    statements = sum(calls.values())
    return {
        "seconds": round(seconds, 1),
        "transactions": xacts,
        "transactions_per_s": round(xacts / seconds, 2),
        "transactions_per_s_per_sidecar": round(xacts / seconds / sidecars, 3),
        "rollbacks": after["rollbacks"] - before["rollbacks"],
        "deadlocks": after["deadlocks"] - before["deadlocks"],
        "statements": statements,
        "statements_per_s": round(statements / seconds, 2),
        "statements_per_s_per_sidecar": round(statements / seconds / sidecars, 3),
        "statement_evictions": after["evicted"] - before["evicted"],
        "top_statements": [
            {"role": role, "query": query, "calls": n, "per_s": round(n / seconds, 3)}
            for (role, query), n in calls.most_common(8)
        ],
    }


class Sampler:
    """Backends (and PgBouncer's pools) sampled on a period, each sample tagged with the phase
    the run is in; PostgreSQL down is a sample without backends."""

    def __init__(
        self,
        observer: Observer,
        pools: Callable[[], Any] | None,
        every_s: float,
        started: float,
    ) -> None:
        self.observer = observer
        self.pools = pools
        self.every_s = every_s
        self.started = started
        self.phase = "load"
        self.samples: list[dict[str, Any]] = []

    async def one(self) -> dict[str, Any]:
        sample: dict[str, Any] = {
            "t_s": round(time.monotonic() - self.started, 2),
            "phase": self.phase,
        }
        try:
            sample["backends"] = await self.observer.backends()
        except Exception:  # PostgreSQL away: asyncpg's errors, refused connections, timeouts
            sample["backends"] = None
        if self.pools is not None:
            try:
                sample["pgbouncer"] = await self.pools()
            except (OSError, RuntimeError):
                sample["pgbouncer"] = None
        return sample

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.samples.append(await self.one())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.every_s):
                    await stop.wait()

    def peak(self, phases: tuple[str, ...]) -> dict[str, Any]:
        """The sample with most backends over `phases`, and PgBouncer's most server
        connections and waiting clients over them."""
        mine = [s for s in self.samples if s["phase"] in phases]
        seen = [s for s in mine if s["backends"] is not None]
        top = max(seen, key=lambda s: s["backends"]["total"], default=None)
        out: dict[str, Any] = {
            "samples": len(mine),
            "samples_without_postgres": len(mine) - len(seen),
            "backends": top["backends"] if top else None,
            "at_t_s": top["t_s"] if top else None,
        }
        pools = [s["pgbouncer"] for s in mine if s.get("pgbouncer")]
        if pools:
            out["pgbouncer_servers"] = max(p["servers"] for p in pools)
            out["pgbouncer_clients_active"] = max(p["cl_active"] for p in pools)
            out["pgbouncer_clients_waiting"] = max(p["cl_waiting"] for p in pools)
        return out
