"""Every write to the registry as one statement: a call of `registry_write_v2` with its kind's
arguments taken from a plain JSON payload.

A write takes a plain JSON payload, so a write answered directly and the same write replayed
from the journal run exactly the same code. The effect itself, its refusals (a `RegistryError`'s
slug and detail) and the answers other than an agent's document are SQL (migrations 0004 and
0005), so that the effect, the ledger row and the audit row reach PostgreSQL in one round trip;
`proxy.store.repository.ledger` sends it, reads what came back and renders an agent's document
from the row it answers with. Callers never supply SQL; column names are fixed here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from proxy.registry.requests import WriteKind
from proxy.store.repository.rows import COLUMN_NAMES


@dataclass(frozen=True, slots=True)
class WriteContext:
    tenant: str
    actor: str
    request_id: str | None
    max_agents: int
    at: datetime | None = None
    """When the write was asked for, if not now (a journaled write being replayed)."""


Args = Callable[[WriteContext, dict[str, Any]], tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Write:
    """One kind of write: its statement, and its arguments after the common ones (tenant, op id,
    request hash, actor, request id, time asked, target), in the order the statement names."""

    sql: str
    args: Args


# What `registry_write_v2` answers, with the agent's row in the columns `record_from_row` reads.
_OUTCOME = "w.w_seen, w.w_same, w.w_state, w.w_status, w.w_body, w.w_reason, w.w_slug, " + (
    "w.w_detail, w.w_at, " + ", ".join(f"(w.w_agent).{c}" for c in COLUMN_NAMES)
)
_COMMON = "$1, $2, $3, $4, $5, $6, $7"


def _statement(kind: WriteKind, params: tuple[str, ...], *, action: str | None = None) -> str:
    """The call of `registry_write_v2` for `kind`: the common arguments by position, the audit
    action (the kind's name unless given), then the kind's own arguments by name."""
    first = 8 if action is None else 9
    named = "".join(f", p_{name} => ${n}" for n, name in enumerate(params, start=first))
    action = action or f"'{kind.value}'"
    return f"SELECT {_OUTCOME} FROM registry_write_v2('{kind.value}', {_COMMON}, {action}{named}) w"


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _register(ctx: WriteContext, p: dict[str, Any]) -> tuple[Any, ...]:
    body = p["body"]
    caps = body["capabilities"]
    return (
        ctx.max_agents,
        body["name"],
        body["model_family"],
        caps["task_types"],
        caps.get("languages", []),
        caps.get("specializations", []),
        body.get("max_concurrent_tasks", 10),
    )


def _patch(ctx: WriteContext, p: dict[str, Any]) -> tuple[Any, ...]:
    # A field left out stays NULL: unchanged (a patch never sets one to null).
    body = p["body"]
    caps = body.get("capabilities")
    return (
        p.get("if_match"),
        body.get("name"),
        body.get("model_family"),
        body.get("max_concurrent_tasks"),
        caps is not None,
        None if caps is None else caps["task_types"],
        None if caps is None else caps.get("languages", []),
        None if caps is None else caps.get("specializations", []),
    )


def _load(ctx: WriteContext, p: dict[str, Any]) -> tuple[Any, ...]:
    body = p["body"]
    return (body["active_tasks"], body["queued_tasks"], _dt(body["observed_at"]))


def _heartbeat(ctx: WriteContext, p: dict[str, Any]) -> tuple[Any, ...]:
    return (_dt(p["observed_at"]),)


def _performance(ctx: WriteContext, p: dict[str, Any]) -> tuple[Any, ...]:
    body = p["body"]
    return (
        body["event_id"],
        body["success"],
        body["quality_score"],
        body["latency_ms"],
        body.get("task_type"),
    )


def _nothing(ctx: WriteContext, p: dict[str, Any]) -> tuple[Any, ...]:
    return ()


def _admin(ctx: WriteContext, p: dict[str, Any]) -> tuple[Any, ...]:
    # An admin action has no effect on the registry: it is written for its audit row, whose
    # action names it.
    return (f"admin:{p['action']}",)


# Keyed by WriteKind, whose members equal their strings: a journal's kind finds its write too.
WRITES: dict[str, Write] = {
    WriteKind.REGISTER: Write(
        _statement(
            WriteKind.REGISTER,
            (
                "max_agents",
                "name",
                "model_family",
                "task_types",
                "languages",
                "specializations",
                "max_concurrent_tasks",
            ),
        ),
        _register,
    ),
    WriteKind.PATCH: Write(
        _statement(
            WriteKind.PATCH,
            (
                "if_match",
                "name",
                "model_family",
                "max_concurrent_tasks",
                "capabilities",
                "task_types",
                "languages",
                "specializations",
            ),
        ),
        _patch,
    ),
    WriteKind.LOAD: Write(
        _statement(WriteKind.LOAD, ("active_tasks", "queued_tasks", "observed_at")), _load
    ),
    WriteKind.HEARTBEAT: Write(_statement(WriteKind.HEARTBEAT, ("observed_at",)), _heartbeat),
    WriteKind.PERFORMANCE: Write(
        _statement(
            WriteKind.PERFORMANCE,
            ("event_id", "success", "quality_score", "latency_ms", "task_type"),
        ),
        _performance,
    ),
    WriteKind.UNREGISTER: Write(_statement(WriteKind.UNREGISTER, ()), _nothing),
    WriteKind.ADMIN: Write(_statement(WriteKind.ADMIN, (), action="$8"), _admin),
}


def target_of(kind: str, payload: dict[str, Any]) -> str:
    """What the write is about, as its audit row names it: an agent id, or an admin target."""
    if kind == WriteKind.ADMIN:
        return str(payload["target"])
    if kind == WriteKind.REGISTER:
        return str(payload["body"]["agent_id"])
    return str(payload["agent_id"])
