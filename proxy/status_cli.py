"""`registry-proxy status`: a running sidecar's state on one screen, for a person or a script.

It reads the sidecar's `GET /v1/status` (with a token: any role; an admin token sees every
tenant, the journal's path and the replay errors) and `GET /metrics` (no token), and prints the
breaker with its recent transitions, the journal (depth, oldest pending write), the replay, the
replica's freshness, the pool and the overload figures. `--json` prints both documents as one
JSON object instead.

The token comes from `--token`, `--token-file`, `REGISTRY_PROXY_STATUS_TOKEN` or
`REGISTRY_PROXY_STATUS_TOKEN_FILE`, in that order; failing those, from the sidecar's own token
configuration when this process has it (`REGISTRY_PROXY_TOKENS` or `REGISTRY_PROXY_TOKENS_FILE`,
as in the sidecar's container; an admin token first, tokens given only by their hash are no
use). Without any token only `/metrics` is read, which has no transitions and no replay errors.

Exit status: 0 when the sidecar answered, 2 when nothing answers at the URL (not running, wrong
port), 3 when the sidecar refused the token, 1 for any other failure. HTTP goes through the
standard library, never through a proxy from the environment: the sidecar is on loopback.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

DEFAULT_URL = "http://127.0.0.1:3580"
TOKEN_ENV = "REGISTRY_PROXY_STATUS_TOKEN"  # noqa: S105 - a variable name
TOKEN_FILE_ENV = "REGISTRY_PROXY_STATUS_TOKEN_FILE"  # noqa: S105 - a variable name
EXIT_OK, EXIT_FAILED, EXIT_NOT_RUNNING, EXIT_REFUSED = 0, 1, 2, 3
PREFIX = "registry_proxy_"


class StatusFailure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---- where the token comes from ----------------------------------------------------------------


def _read_token_file(path: str, what: str) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise StatusFailure(EXIT_FAILED, f"{what} {path} not read: {exc.strerror}") from None
    if not token:
        raise StatusFailure(EXIT_FAILED, f"{what} {path} is empty")
    return token


def _sidecar_token(environ: Mapping[str, str]) -> str | None:
    """A plain token of the sidecar's own configuration: an admin one first."""
    spec = environ.get("REGISTRY_PROXY_TOKENS")
    path = environ.get("REGISTRY_PROXY_TOKENS_FILE")
    try:
        if not spec and path:
            spec = Path(path).read_text()
        entries = json.loads(spec) if spec else []
    except (OSError, ValueError):
        return None
    if not isinstance(entries, list):
        return None
    plain = [e for e in entries if isinstance(e, dict) and isinstance(e.get("token"), str)]
    plain.sort(key=lambda e: e.get("role") != "admin")
    return str(plain[0]["token"]) if plain else None


def find_token(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str | None, str]:
    """(token or None, where it came from)."""
    if args.token:
        return args.token, "--token"
    if args.token_file:
        return _read_token_file(args.token_file, "token file"), "--token-file"
    if environ.get(TOKEN_ENV):
        return environ[TOKEN_ENV].strip(), TOKEN_ENV
    if environ.get(TOKEN_FILE_ENV):
        return _read_token_file(environ[TOKEN_FILE_ENV], TOKEN_FILE_ENV), TOKEN_FILE_ENV
    token = _sidecar_token(environ)
    if token is not None:
        return token, "the sidecar's token configuration"
    return None, "none"


# ---- reading the sidecar -----------------------------------------------------------------------

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(base: str, path: str, token: str | None, timeout: float) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(base + path, headers=headers)  # noqa: S310 - http(s) only
    try:
        with _OPENER.open(request, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()
    except urllib.error.URLError as exc:
        raise _unreachable(base, exc.reason) from None
    except (OSError, http.client.HTTPException) as exc:
        raise _unreachable(base, exc) from None


def _unreachable(base: str, reason: object) -> StatusFailure:
    if isinstance(reason, ConnectionRefusedError):
        why = "connection refused: is the sidecar running, and on this port?"
    elif isinstance(reason, TimeoutError | socket.timeout):
        why = "no answer in time: the sidecar (or the network to it) is stuck"
    elif isinstance(reason, socket.gaierror):
        why = f"unknown host ({reason.strerror})"
    elif isinstance(reason, OSError) and reason.strerror:
        why = reason.strerror
    else:
        why = str(reason) or type(reason).__name__
    return StatusFailure(EXIT_NOT_RUNNING, f"no sidecar answers at {base}: {why}")


def _problem_text(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return body[:200].decode(errors="replace").strip()
    if isinstance(doc, dict):
        return str(doc.get("detail") or doc.get("title") or doc)
    return str(doc)


def read_status(base: str, token: str, timeout: float) -> dict[str, Any]:
    status, body = _get(base, "/v1/status", token, timeout)
    if status == 200:
        doc = json.loads(body)
        if not isinstance(doc, dict):
            raise StatusFailure(EXIT_FAILED, "GET /v1/status answered something else than JSON")
        return doc
    if status in (401, 403):
        what = "is not one of its tokens" if status == 401 else "may not read it"
        raise StatusFailure(
            EXIT_REFUSED,
            f"the sidecar refused the token ({status} on GET /v1/status: the token {what}). "
            f"Pass one of the sidecar's tokens with --token, --token-file or {TOKEN_ENV}; "
            "any role reads the status, an admin token sees every tenant.",
        )
    raise StatusFailure(EXIT_FAILED, f"GET /v1/status answered {status}: {_problem_text(body)}")


def parse_metrics(text: str) -> dict[str, Any]:
    """The sidecar's own samples (histogram buckets left out): name -> value, or -> a list of
    {"labels", "value"} for a labelled metric. NaN (a replica never synced) becomes null."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith(PREFIX) or sample.name.endswith("_bucket"):
                continue
            value = sample.value if math.isfinite(sample.value) else None
            if sample.labels:
                series = out.setdefault(sample.name, [])
                if isinstance(series, list):
                    series.append({"labels": dict(sample.labels), "value": value})
            else:
                out[sample.name] = value
    return out


def read_metrics(base: str, timeout: float) -> dict[str, Any]:
    status, body = _get(base, "/metrics", None, timeout)
    if status != 200:
        raise StatusFailure(EXIT_FAILED, f"GET /metrics answered {status}")
    try:
        return parse_metrics(body.decode())
    except ValueError as exc:
        raise StatusFailure(EXIT_FAILED, f"GET /metrics is not Prometheus text: {exc}") from None


def gather(base: str, token: str | None, timeout: float) -> dict[str, Any]:
    """Both documents; /metrics failing is no reason to hide a status that was read."""
    data: dict[str, Any] = {"url": base, "status": None, "metrics": None, "notes": []}
    if token is not None:
        data["status"] = read_status(base, token, timeout)
    try:
        data["metrics"] = read_metrics(base, timeout)
    except StatusFailure as exc:
        if data["status"] is None:
            raise
        data["notes"].append(exc.message)
    if token is None:
        data["notes"].append(
            f"no token (--token, --token-file or {TOKEN_ENV}): only /metrics was read, so no "
            "breaker transitions, journal age or replay errors"
        )
    return data


# ---- for a person ------------------------------------------------------------------------------


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
        lines.append(
            f"          resynced {_n(replica['resyncs'], 'time')}, "
            f"{_n(replica.get('notifications', 0), 'change notification')}"
        )
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


# ---- the command -------------------------------------------------------------------------------


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "status",
        help="show a running sidecar's breaker, journal, replica and overload state",
        description=(
            "Read GET /v1/status and GET /metrics of a running sidecar and show them. Exit 2 "
            "when nothing answers at the URL, 3 when the token is refused."
        ),
    )
    p.add_argument("--url", default=DEFAULT_URL, help=f"the sidecar (default {DEFAULT_URL})")
    p.add_argument("--token", help=f"a token of the sidecar (or set {TOKEN_ENV})")
    p.add_argument("--token-file", help=f"a file holding the token (or set {TOKEN_FILE_ENV})")
    p.add_argument("--json", action="store_true", help="print both documents as one JSON object")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per request (default 5)")
    p.add_argument("--transitions", type=int, default=5, help="how many to show (default 5)")
    return p  # type: ignore[no-any-return]


def run(
    args: argparse.Namespace,
    *,
    environ: Mapping[str, str] | None = None,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> int:
    environ = os.environ if environ is None else environ
    out = out or sys.stdout
    err = err or sys.stderr
    base = str(args.url).rstrip("/")
    if not base.startswith(("http://", "https://")):
        print(f"registry-proxy: --url must start with http:// or https://: {base}", file=err)
        return EXIT_FAILED
    try:
        token, _source = find_token(args, environ)
        data = gather(base, token, args.timeout)
    except StatusFailure as exc:
        print(f"registry-proxy: {exc.message}", file=err)
        return exc.code
    if args.json:
        out.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    else:
        out.write(render(data, recent=max(1, args.transitions)))
    return EXIT_OK
