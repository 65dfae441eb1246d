"""Journaled writes applied to PostgreSQL: a batch of entries in one transaction, a savepoint each.

One transaction per batch makes an entry cost its statements rather than a commit of its own; the
savepoint per entry keeps a rejected entry (a conflict, an agent limit) from undoing the others.
Each entry is applied as its request would have been, with its own op id, so the ledger applies
it once whatever happened to an earlier attempt. This is the PostgreSQL side of the replay only:
what to do with the outcomes (the journal, the replica, the waiting writes) is `replay`'s.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from proxy.registry import errors
from proxy.registry.agent import AgentRecord
from proxy.registry.requests import REGISTRY_KINDS
from proxy.resilience import ErrorKind
from proxy.service.context import op_id_of
from proxy.store import repository
from proxy.store.journal import JournalEntry, OpStatus
from proxy.store.pg_errors import classify

# An entry's outcome: its status, the reason of a rejection, the row of an applied write.
Applied = tuple[JournalEntry, OpStatus, str | None, AgentRecord | None]


def replay_context(entry: JournalEntry, max_agents: int) -> repository.WriteContext:
    """The write context of the request that journaled the entry: its actor, request id and the
    time it was received."""
    meta = entry.payload
    return repository.WriteContext(
        entry.tenant,
        meta.get("actor", "journal"),
        meta.get("request_id"),
        max_agents,
        at=datetime.fromisoformat(meta["received_at"]) if "received_at" in meta else None,
    )


async def apply_batch(
    conn: asyncpg.Connection, batch: list[JournalEntry], max_agents: int
) -> tuple[list[Applied], list[AgentRecord], tuple[JournalEntry, BaseException] | None]:
    """Apply entries in order in one transaction, each in a savepoint of its own.

    Returns the outcome of each entry applied or rejected, the rows of every agent the batch
    touched as they stand at its commit (what the replica shows next), and the entry that broke
    the batch with its error, if one did: the entries before it still commit, the rest wait."""
    results: list[Applied] = []
    broken: tuple[JournalEntry, BaseException] | None = None
    async with conn.transaction():
        for entry in batch:
            meta = entry.payload
            try:
                outcome = await repository.execute_write(
                    conn,
                    replay_context(entry, max_agents),
                    kind=entry.kind,
                    payload=meta["payload"],
                    op_id=op_id_of(entry.op_id),
                    req_hash=meta.get("hash", ""),
                )
            except errors.RegistryError as exc:
                results.append((entry, OpStatus.REJECTED, f"{exc.slug}: {exc.detail}", None))
                continue
            except Exception as exc:
                # An outage or a lost race undoes the batch (it is tried again whole); only a
                # failure of this entry itself stops the batch here, keeping those before it.
                if classify(exc) is not ErrorKind.PERMANENT:
                    raise
                broken = (entry, exc)
                break
            if outcome.applied:
                results.append((entry, OpStatus.APPLIED, None, outcome.record))
            else:
                results.append((entry, OpStatus.REJECTED, outcome.reason, None))
        agents: dict[str, list[str]] = {}
        for entry, *_ in results:
            if entry.kind in REGISTRY_KINDS:
                agents.setdefault(entry.tenant, []).append(entry.key)
        records = [
            rec
            for tenant, ids in agents.items()
            for rec in await repository.fetch_rows(conn, tenant, ids)
        ]
    return results, records, broken
