"""How `registry-proxy status` shows a sidecar's state to a person: the breaker with its recent
transitions, the journal, the replay, the replica, the pool and the overload figures, each as a
few aligned lines, from `GET /v1/status` when a token let it be read, else from `GET /metrics`.

Kept apart from the command (`proxy.status_cli`), which finds the token and reads the two
documents: this part only turns them into text, so its tests need no sidecar.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

PREFIX = "registry_proxy_"


def _n(count: float, word: str) -> str:
    return f"{count:.0f} {word}{'' if count == 1 else 's'}"


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds // 60:.0f} min {seconds % 60:.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:.0f} min"


def _when(epoch: float, now: float) -> str:
    stamp = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return f"{stamp} ({_ago(now - epoch)} ago)"


def _series(metrics: dict[str, Any], name: str) -> dict[str, float]:
    """A one-label metric as label value -> value."""
    out: dict[str, float] = {}
    for item in metrics.get(PREFIX + name, []) or []:
        labels = item["labels"]
        out[",".join(str(v) for v in labels.values())] = item["value"]
    return out


_BREAKER = {
    "closed": "closed: calls go to PostgreSQL",
    "open": "OPEN: PostgreSQL is failing; reads come from the replica, writes are journaled",
    "half_open": "half-open: a few trial calls go to PostgreSQL",
    "forced_open": (
        "FORCED OPEN by an operator: reads come from the replica, writes are journaled "
        '(POST /v1/admin/breaker {"state": "automatic"} ends it)'
    ),
    "disabled": "DISABLED by an operator: every call goes to PostgreSQL, whatever happens",
}


def _breaker_lines(doc: dict[str, Any], now: float, recent: int) -> list[str]:
    breaker = doc.get("breaker") or {}
    state = str(breaker.get("state", "unknown"))
    lines = [f"breaker   {_BREAKER.get(state, state)}"]
    if state == "open" and breaker.get("retry_after_s"):
        lines.append(f"          next trial in about {breaker['retry_after_s']:.1f} s")
    transitions = breaker.get("transitions") or []
    if transitions:
        shown = transitions[-recent:]
        lines.append(f"          last {len(shown)} of {len(transitions)} transitions:")
        for t in shown:
            lines.append(
                f"            {_when(float(t['at']), now)}  {t['from']} -> {t['to']}: {t['cause']}"
            )
    else:
        lines.append("          no transition since the sidecar started")
    probe = doc.get("probe") or {}
    if probe.get("last_error"):
        lines.append(f"probe     last error: {probe['last_error']}")
    budget = doc.get("retry_budget")
    if budget:
        lines.append(
            f"retries   {budget.get('retries', 0)} for {_n(budget.get('requests', 0), 'request')} "
            f"in the last {budget.get('window_s', '?')} s, {budget.get('allowed_now', 0)} more "
            f"allowed now; budget spent {_n(budget.get('exhausted_count', 0), 'time')}"
        )
    return lines


def _journal_lines(doc: dict[str, Any]) -> list[str]:
    journal = doc.get("journal") or {}
    if journal.get("enabled") is False:
        return ["journal   disabled"]
    depth = int(journal.get("depth", 0))
    text = f"journal   {_n(depth, 'acknowledged write')} not yet applied"
    if depth and journal.get("oldest_pending_age_s") is not None:
        text += f", oldest {_ago(float(journal['oldest_pending_age_s']))} old"
    lines = [text]
    if journal.get("failed"):
        lines.append(f"          FAILED: {journal['failed']}")
    if journal.get("writable") is False:
        lines.append("          NOT WRITABLE: new writes that need it are refused (503)")
    disk = journal.get("disk") or {}
    if disk.get("full"):
        refused = int(disk.get("entries_refused", 0))
        lines.append(f"          disk full; {_n(refused, 'write')} refused")
    damage = journal.get("damage") or {}
    if damage.get("quarantined") or damage.get("side_files"):
        quarantined = len(damage.get("quarantined") or [])
        files = ", ".join(str(f) for f in damage.get("side_files") or []) or "none"
        lines.append(
            f"          DAMAGE set aside: {_n(quarantined, 'region')} quarantined; "
            f"side files: {files}"
        )
    if journal.get("path"):
        lines.append(f"          {journal['path']}")
    return lines


def _replay_lines(doc: dict[str, Any]) -> list[str]:
    replay = doc.get("replay")
    if replay is None:
        return ["replay    (an admin token shows the replay's counts and errors)"]
    lines = [
        f"replay    applied {replay.get('applied', 0)}, rejected {replay.get('rejected', 0)}, "
        f"failed {replay.get('failed', 0)} (in {replay.get('runs', 0)} runs)"
    ]
    if replay.get("last_error"):
        lines.append(f"          last error: {replay['last_error']}")
    return lines


def _guard_lines(doc: dict[str, Any]) -> list[str]:
    guard = doc.get("failover_guard")
    if not guard or not guard.get("enabled"):
        return [] if guard is None else ["failover  guard off"]
    if guard.get("positions_visible"):
        seen = "standbys' positions visible"
    elif guard.get("standbys"):
        seen = "standbys' positions hidden (grant pg_monitor)"
    else:
        seen = "no standby"
    lines = [
        f"failover  {_n(guard.get('unconfirmed', 0), 'write')} not yet on every standby, "
        f"timeline {guard.get('timeline')}, {_n(guard.get('standbys', 0), 'standby')}, {seen}; "
        f"{_n(guard.get('promotions', 0), 'promotion')} seen, "
        f"{_n(guard.get('reapplied', 0), 'write')} applied again"
    ]
    if guard.get("last_error"):
        lines.append(f"          last error: {guard['last_error']}")
    return lines


def _replica_lines(doc: dict[str, Any]) -> list[str]:
    replica = doc.get("replica") or {}
    age = replica.get("age_seconds")
    parts = [
        "never synced" if age is None else f"{_ago(float(age))} old",
        _n(int(replica.get("agents", 0)), "agent"),
        "listener connected" if replica.get("connected") else "listener NOT connected",
    ]
    if replica.get("from_snapshot"):
        parts.append("loaded from the snapshot on disk")
    if replica.get("partial"):
        parts.append("PARTIAL (more agents than replica.max_agents)")
    if replica.get("pending_writes"):
        parts.append(f"showing {_n(int(replica['pending_writes']), 'journaled write')}")
    lines = ["replica   " + ", ".join(parts)]
    if "resyncs" in replica:
        heard = (
            f"          resynced {_n(replica['resyncs'], 'time')}, "
            f"{_n(replica.get('notifications', 0), 'change notification')}"
        )
        if replica.get("notify_windows"):
            heard += f" (read in {_n(replica['notify_windows'], 'window')})"
        lines.append(heard)
    return lines


def _pool_lines(doc: dict[str, Any]) -> list[str]:
    pool = doc.get("pool") or {}
    if not pool:
        return []
    if not pool.get("connected"):
        text = "pool      not connected yet"
    else:
        text = f"pool      {pool.get('in_use', 0)} in use, {pool.get('idle', 0)} idle"
        text += f", at most {pool.get('max', '?')}"
        if pool.get("background"):
            text += f" ({pool['background']} of them for background work)"
    lines = [text]
    if pool.get("last_error"):
        lines.append(f"          last error: {pool['last_error']}")
    return lines


def _overload_lines(doc: dict[str, Any]) -> list[str]:
    overload = doc.get("overload")
    if not overload:
        return []
    items: list[str] = []
    bulkhead = overload.get("bulkhead")
    if bulkhead:
        items.append(
            f"bulkhead {bulkhead.get('in_use', 0)}/{bulkhead.get('limit', '?')} in use, "
            f"{bulkhead.get('queued', 0)} queued (at most {bulkhead.get('max_queue', '?')}), "
            f"longest wait {float(bulkhead.get('max_wait_seconds') or 0.0):.3f} s"
        )
        shed = bulkhead.get("shed_total") or {}
        if shed:
            items.append("shed: " + ", ".join(f"{reason} {n}" for reason, n in shed.items()))
    lag = overload.get("loop_lag")
    if lag:
        items.append(
            f"loop lag {float(lag.get('last_ms') or 0.0):.1f} ms now, "
            f"{float(lag.get('max_ms') or 0.0):.1f} ms at most, "
            f"{'SHEDDING' if lag.get('shedding') else 'not shedding'}"
        )
    if overload.get("backlog_waiters"):
        waiting = _n(int(overload["backlog_waiters"]), "write")
        items.append(f"{waiting} waiting for their agent's backlog")
    return [("overload  " if i == 0 else " " * 10) + item for i, item in enumerate(items)]


def _writes_line(metrics: dict[str, Any]) -> list[str]:
    accepted = metrics.get(PREFIX + "writes_accepted_total")
    committed = _series(metrics, "writes_committed_total")
    if accepted is None and not committed:
        return []
    return [
        f"writes    journaled (202) {accepted or 0:.0f}; committed directly "
        f"{committed.get('direct', 0):.0f}, by the replay {committed.get('replay', 0):.0f}"
    ]


def _from_metrics(metrics: dict[str, Any]) -> list[str]:
    """What /metrics alone tells, when no token was given."""
    states = _series(metrics, "breaker_state")
    state = next((name.split(",")[-1] for name, v in states.items() if v == 1), "unknown")
    lines = [f"breaker   {_BREAKER.get(state, state)}"]
    depth = metrics.get(PREFIX + "journal_depth")
    if depth is not None:
        lines.append(f"journal   {_n(depth, 'acknowledged write')} not yet applied")
    replay = _series(metrics, "journal_replay_total")
    if replay:
        lines.append(
            "replay    " + ", ".join(f"{k} {replay.get(k, 0):.0f}" for k in sorted(replay))
        )
    agents = metrics.get(PREFIX + "replica_agents")
    if agents is not None:
        age = metrics.get(PREFIX + "replica_age_seconds")  # null: never synced
        when = "never synced" if age is None else f"{_ago(age)} old"
        lines.append(f"replica   {when}, {_n(agents, 'agent')}")
    pool = _series(metrics, "pool_connections")
    if pool:
        lines.append(
            f"pool      {pool.get('in_use', 0):.0f} in use, {pool.get('idle', 0):.0f} idle, "
            f"at most {pool.get('max', 0):.0f}"
        )
    queued = metrics.get(PREFIX + "db_queue_depth")
    shed = _series(metrics, "shed_total")
    lag = metrics.get(PREFIX + "loop_lag_seconds")
    if queued is not None or shed or lag is not None:
        lines.append(
            f"overload  {queued or 0:.0f} queued for a connection, loop lag {lag or 0:.3f} s"
        )
        if shed:
            lines.append("          shed: " + ", ".join(f"{k} {v:.0f}" for k, v in shed.items()))
    return lines


def render(data: dict[str, Any], *, now: float | None = None, recent: int = 5) -> str:
    now = time.time() if now is None else now
    doc = data.get("status")
    metrics = data.get("metrics") or {}
    if doc is not None:
        scope = doc.get("scope")
        view = f"tenant {scope['tenant']} only" if scope else "every tenant"
        lines = [f"registry-proxy at {data['url']} ({view})", ""]
        if "read_mode" in doc:
            lines.append(
                f"modes     read_mode {doc['read_mode']}, "
                f"write_fallback {doc.get('write_fallback', '?')}"
            )
        lines += _breaker_lines(doc, now, recent)
        lines += _journal_lines(doc)
        lines += _replay_lines(doc)
        lines += _guard_lines(doc)
        lines += _replica_lines(doc)
        lines += _pool_lines(doc)
        lines += _overload_lines(doc)
    else:
        lines = [f"registry-proxy at {data['url']} (from /metrics only)", ""]
        lines += _from_metrics(metrics)
    lines += _writes_line(metrics)
    notes = data.get("notes") or []
    if notes:
        lines.append("")
        lines += [f"note: {note}" for note in notes]
    return "\n".join(lines) + "\n"
