"""The effect of one write on an agent, computed without a database.

The replica uses this to show a journaled write to the host app before PostgreSQL has it
(read-your-writes during an outage). The rules mirror `proxy.store.repository`; PostgreSQL stays
the judge: when the journal is replayed, its answer replaces this provisional one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from proxy.registry import errors
from proxy.registry.agent import AgentRecord

# Journaled versions are provisional: they sort after any real one and never leak as an ETag
# a client could use with If-Match against PostgreSQL.
PROVISIONAL_VERSION = 0


def apply_write(
    kind: str,
    tenant: str,
    payload: dict[str, Any],
    current: AgentRecord | None,
    now: datetime,
) -> AgentRecord | None:
    """The agent after the write, or None when it is deleted; raises RegistryError on conflict."""
    if kind == "register":
        body = payload["body"]
        if current is not None and current.deleted_at is None:
            raise errors.DuplicateAgent(f"agent {body['agent_id']!r} is already registered")
        caps = body["capabilities"]
        return AgentRecord(
            tenant_id=tenant,
            agent_id=body["agent_id"],
            name=body["name"],
            model_family=body["model_family"],
            task_types=tuple(caps["task_types"]),
            languages=tuple(caps.get("languages", [])),
            specializations=tuple(caps.get("specializations", [])),
            max_concurrent_tasks=body.get("max_concurrent_tasks", 10),
            active_tasks=0,
            queued_tasks=0,
            load_observed_at=None,
            registered_at=now,
            last_heartbeat_at=now,
            updated_at=now,
            version=PROVISIONAL_VERSION,
            deleted_at=None,
            task_count=0,
            success_count=0,
            quality_sum=0.0,
            latency_ms_sum=0.0,
        )
    if kind == "unregister":
        return None
    if current is None or current.deleted_at is not None:
        raise errors.NotFound(f"agent {payload['agent_id']!r} is not registered")
    if kind == "patch":
        if_match = payload.get("if_match")
        if if_match is not None and if_match != current.version:
            raise errors.PreconditionFailed(
                f"If-Match version {if_match} does not match current version {current.version}"
            )
        body = payload["body"]
        changes: dict[str, Any] = {
            k: body[k] for k in ("name", "model_family", "max_concurrent_tasks") if k in body
        }
        if "capabilities" in body:
            caps = body["capabilities"]
            changes["task_types"] = tuple(caps["task_types"])
            changes["languages"] = tuple(caps.get("languages", []))
            changes["specializations"] = tuple(caps.get("specializations", []))
        return current.evolve(updated_at=now, version=PROVISIONAL_VERSION, **changes)
    if kind == "load":
        body = payload["body"]
        observed = datetime.fromisoformat(body["observed_at"])
        if current.load_observed_at is not None and current.load_observed_at > observed:
            return current
        return current.evolve(
            active_tasks=body["active_tasks"],
            queued_tasks=body["queued_tasks"],
            load_observed_at=observed,
            updated_at=now,
            version=PROVISIONAL_VERSION,
        )
    if kind == "heartbeat":
        seen = datetime.fromisoformat(payload["observed_at"])
        return current.evolve(
            last_heartbeat_at=max(current.last_heartbeat_at, seen),
            updated_at=now,
            version=PROVISIONAL_VERSION,
        )
    if kind == "performance":
        body = payload["body"]
        return current.evolve(
            task_count=current.task_count + 1,
            success_count=current.success_count + (1 if body["success"] else 0),
            quality_sum=current.quality_sum + body["quality_score"],
            latency_ms_sum=current.latency_ms_sum + body["latency_ms"],
            updated_at=now,
            version=PROVISIONAL_VERSION,
        )
    raise ValueError(f"unknown write kind {kind!r}")
