"""The effect of one write on an agent, computed without a database.

The replica uses this to show a journaled write to the host app before PostgreSQL has it
(read-your-writes during an outage). The rules mirror `registry_write_v2` (migrations 0004,
0005); PostgreSQL stays the judge: when the journal is replayed, its answer replaces this
provisional one.

The revision (the ETag) is computed exactly as PostgreSQL will: the base row's, +1 for each
patch that changes a value, +1 for a re-registration. So an ETag read from the replica during an
outage is the one PostgreSQL holds once the journal is replayed, provided nothing else changed
the agent meanwhile, and a patch journaled with it passes its If-Match on replay.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from proxy.registry import errors
from proxy.registry.agent import AgentRecord
from proxy.registry.requests import WriteKind

# The change watermark of a journaled write is drawn by PostgreSQL when it applies it; until then
# the record shows this. It is never an ETag (that is the revision).
PROVISIONAL_VERSION = 0

_PATCHABLE = ("name", "model_family", "max_concurrent_tasks")


def apply_write(
    kind: str,
    tenant: str,
    payload: dict[str, Any],
    current: AgentRecord | None,
    now: datetime,
) -> AgentRecord | None:
    """The agent after the write; raises RegistryError on conflict.

    An unregistered agent is returned with `deleted_at` set (None when there was no agent), so
    that a re-registration after it continues its revision; readers skip such records.
    `kind` is a `WriteKind` or its value, as a journal record gives it back.
    """
    try:
        kind = WriteKind(kind)
    except ValueError:
        raise ValueError(f"unknown write kind {kind!r}") from None
    if kind is WriteKind.REGISTER:
        body = payload["body"]
        if current is not None and current.deleted_at is None:
            raise errors.DuplicateAgent(f"agent {body['agent_id']!r} is already registered")
        caps = body["capabilities"]
        # A re-registration continues the revision of the unregistered row, as PostgreSQL does.
        # A row unregistered before the replica lost PostgreSQL is no longer held, so its
        # re-registration shows 1 where PostgreSQL will have more: a patch sent with that ETag
        # then fails its If-Match on replay, it can never match a wrong state.
        revision = current.revision + 1 if current is not None else 1
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
            revision=revision,
        )
    if kind is WriteKind.UNREGISTER:
        if current is None or current.deleted_at is not None:
            return current
        # Kept as a tombstone so a re-registration journaled after it knows the revision.
        return current.evolve(deleted_at=now, updated_at=now, version=PROVISIONAL_VERSION)
    if current is None or current.deleted_at is not None:
        raise errors.NotFound(f"agent {payload['agent_id']!r} is not registered")
    if kind is WriteKind.PATCH:
        if_match = payload.get("if_match")
        if if_match is not None and if_match != current.revision:
            raise errors.PreconditionFailed(
                f"If-Match revision {if_match} does not match current revision {current.revision}"
            )
        body = payload["body"]
        changes: dict[str, Any] = {k: body[k] for k in _PATCHABLE if k in body}
        if "capabilities" in body:
            caps = body["capabilities"]
            changes["task_types"] = tuple(caps["task_types"])
            changes["languages"] = tuple(caps.get("languages", []))
            changes["specializations"] = tuple(caps.get("specializations", []))
        # Only a real change counts, as in the repository's UPDATE (IS DISTINCT FROM).
        changed = any(getattr(current, k) != v for k, v in changes.items())
        return current.evolve(
            updated_at=now,
            version=PROVISIONAL_VERSION,
            revision=current.revision + 1 if changed else current.revision,
            **changes,
        )
    if kind is WriteKind.LOAD:
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
    if kind is WriteKind.HEARTBEAT:
        seen = datetime.fromisoformat(payload["observed_at"])
        return current.evolve(
            last_heartbeat_at=max(current.last_heartbeat_at, seen),
            updated_at=now,
            version=PROVISIONAL_VERSION,
        )
    if kind is WriteKind.PERFORMANCE:
        body = payload["body"]
        return current.evolve(
            task_count=current.task_count + 1,
            success_count=current.success_count + (1 if body["success"] else 0),
            quality_sum=current.quality_sum + body["quality_score"],
            latency_ms_sum=current.latency_ms_sum + body["latency_ms"],
            updated_at=now,
            version=PROVISIONAL_VERSION,
        )
    # An admin record: it changes no agent, so it never reaches an agent's view.
    raise ValueError(f"{kind.value!r} writes change no agent")
