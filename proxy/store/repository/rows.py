"""The agents table's columns and how one of its rows becomes an `AgentRecord`.

Every statement that returns agents selects these columns in this order, so reads, writes and
the replica's change feed all build records the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.registry.agent import AgentRecord

COLUMN_NAMES = (
    "tenant_id",
    "agent_id",
    "name",
    "model_family",
    "task_types",
    "languages",
    "specializations",
    "max_concurrent_tasks",
    "active_tasks",
    "queued_tasks",
    "load_observed_at",
    "registered_at",
    "last_heartbeat_at",
    "updated_at",
    "version",
    "deleted_at",
    "task_count",
    "success_count",
    "quality_sum",
    "latency_ms_sum",
    "revision",
)
COLUMNS = ", ".join(COLUMN_NAMES)


def record_from_row(row: Mapping[str, Any]) -> AgentRecord:
    return AgentRecord(
        tenant_id=row["tenant_id"],
        agent_id=row["agent_id"],
        name=row["name"],
        model_family=row["model_family"],
        task_types=tuple(row["task_types"]),
        languages=tuple(row["languages"]),
        specializations=tuple(row["specializations"]),
        max_concurrent_tasks=row["max_concurrent_tasks"],
        active_tasks=row["active_tasks"],
        queued_tasks=row["queued_tasks"],
        load_observed_at=row["load_observed_at"],
        registered_at=row["registered_at"],
        last_heartbeat_at=row["last_heartbeat_at"],
        updated_at=row["updated_at"],
        version=row["version"],
        deleted_at=row["deleted_at"],
        task_count=row["task_count"],
        success_count=row["success_count"],
        quality_sum=float(row["quality_sum"]),
        latency_ms_sum=float(row["latency_ms_sum"]),
        revision=row["revision"],
    )
