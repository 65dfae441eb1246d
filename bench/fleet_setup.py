"""Setting up the fleet benchmark: PostgreSQL with statement counts, the sidecars and their DSNs.

Every sidecar shares the tenants and tokens (the bench's two writers and an admin, whose
``/v1/status`` covers every tenant's journal). Each DSN carries an ``application_name`` that
names the sidecar and the connection's use, which is how ``bench.fleet_observe`` tells them apart
in ``pg_stat_activity``; connections through PgBouncer carry none, since PgBouncer would set it
on its server connection for every transaction (a statement more each time), and are told apart
by PgBouncer's own role instead.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import orjson

from bench.client import http
from bench.dataset import READ_TENANT, agent_body
from bench.fleet_pgbouncer import Bouncer
from bench.servers import Server, Tokens, sidecar

PROBES = 4


def pooler_supported() -> bool:
    """Whether this sidecar has a direct DSN and a transaction pooler setting."""
    from proxy.settings import DatabaseSettings, Settings

    return (
        "database_direct_url" in Settings.model_fields and "pooler" in DatabaseSettings.model_fields
    )


def token_spec(tokens: Tokens, admin: str) -> str:
    """The bench's writer tokens and an admin one."""
    entries = orjson.loads(tokens.spec())
    entries.append({"token": admin, "tenant": READ_TENANT, "role": "admin", "id": "fleet-admin"})
    return orjson.dumps(entries).decode()


def start_postgres(pg: Any, max_connections: int = 100) -> None:
    """Initialise and start the embedded PostgreSQL with pg_stat_statements loaded (it must be
    preloaded, so it goes into the configuration before the first start) and PostgreSQL's own
    default of `max_connections` (the embedded server's is higher)."""
    pg.init()
    with (pg.data / "postgresql.conf").open("a") as conf:
        conf.write("shared_preload_libraries = 'pg_stat_statements'\n")
        conf.write(f"max_connections = {max_connections}\n")
    pg.start()


def make_sidecars(
    n: int,
    *,
    pg: Any,
    bouncer: Bouncer | None,
    tokens: Tokens,
    admin: str,
    pool_size: int,
    workdir: Path,
) -> list[Server]:
    """N sidecars in replica read mode: pools through `bouncer` (transaction pooling) when
    there is one, else straight to PostgreSQL; the direct DSN always straight to it."""
    servers: list[Server] = []
    for i in range(n):
        name = f"s{i:02d}"
        env = {
            "REGISTRY_PROXY_TOKENS": token_spec(tokens, admin),
            "REGISTRY_PROXY_DATABASE__POOL_MAX_SIZE": str(pool_size),
        }
        if pooler_supported():
            env["REGISTRY_PROXY_DATABASE_DIRECT_URL"] = (
                f"{pg.dsn}?application_name=fleet-{name}-direct"
            )
            env["REGISTRY_PROXY_DATABASE__POOLER"] = "transaction" if bouncer else "none"
        dsn = bouncer.dsn if bouncer else f"{pg.dsn}?application_name=fleet-{name}-pool"
        # `free_port` hands a port out once per process, so no two sidecars share one.
        servers.append(
            sidecar(
                name, dsn=dsn, tokens=tokens, workdir=workdir, read_mode="replica", extra_env=env
            )
        )
    return servers


async def start_all(servers: list[Server]) -> None:
    """The first sidecar migrates; the others then start together, as a rollout would."""
    servers[0].start()
    await servers[0].wait_until("/readyz", 90)
    for s in servers[1:]:
        s.start()
    await asyncio.gather(*(s.wait_until("/readyz", 180) for s in servers[1:]))
    dead = [s.name for s in servers if not s.alive()]
    if dead:
        # Another process answered on its port (one taken meanwhile by an outgoing connection).
        raise RuntimeError(f"sidecars exited at start: {dead}:\n{servers[0].log_tail()}")


async def register_probes(server: Server, token: str) -> list[str]:
    """The agents the propagation prober renames (nobody else writes to them)."""
    rng = random.Random(11)
    probes = [f"fleet-probe-{k}" for k in range(PROBES)]
    for agent in probes:
        status, body = await http(
            server.url + "/v1/agents", method="POST", token=token, body=agent_body(agent, rng)
        )
        if status not in (201, 409):
            raise RuntimeError(f"registering {agent}: {status} {body}")
    return probes
