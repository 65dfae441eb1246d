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
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from proxy.status_view import PREFIX, render

DEFAULT_URL = "http://127.0.0.1:3580"
TOKEN_ENV = "REGISTRY_PROXY_STATUS_TOKEN"  # noqa: S105 - a variable name
TOKEN_FILE_ENV = "REGISTRY_PROXY_STATUS_TOKEN_FILE"  # noqa: S105 - a variable name
EXIT_OK, EXIT_FAILED, EXIT_NOT_RUNNING, EXIT_REFUSED = 0, 1, 2, 3


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
