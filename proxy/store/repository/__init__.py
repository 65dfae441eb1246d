"""The registry's SQL: reads, every write as one function of (kind, payload), and the ledger
that makes each write happen exactly once.

Callers import from here; the modules split it by concept:

- `rows`: the agents table's columns and the record built from a row;
- `reads`: agents, statistics and the capability query with its scoring SQL;
- `writes`: each kind of write as its call of `registry_write_v2` (migration 0005), the SQL
  function that has the effect and writes the ledger and audit rows in one statement;
- `ledger`: a write sent and its outcome read, exactly once per op id, and the ledger's and
  audit log's own reads.
"""

from __future__ import annotations

# These two live in the domain; the service, the HTTP routes and the backlog bench still take
# them from here.
from proxy.registry.requests import REGISTRY_KINDS, request_hash
from proxy.store.repository.ledger import (
    WriteOutcome,
    execute_write,
    fetch_audit,
    fetch_operation,
    prune_ledger,
    record_rejection,
)
from proxy.store.repository.reads import (
    fetch_agent,
    fetch_all,
    fetch_changes_since,
    fetch_rows,
    fetch_stats,
    query_agents,
)
from proxy.store.repository.rows import COLUMNS, record_from_row
from proxy.store.repository.writes import WriteContext, target_of

__all__ = [
    "COLUMNS",
    "REGISTRY_KINDS",
    "WriteContext",
    "WriteOutcome",
    "execute_write",
    "fetch_agent",
    "fetch_all",
    "fetch_audit",
    "fetch_changes_since",
    "fetch_operation",
    "fetch_rows",
    "fetch_stats",
    "prune_ledger",
    "query_agents",
    "record_from_row",
    "record_rejection",
    "request_hash",
    "target_of",
]
