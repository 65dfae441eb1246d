"""What the load generator sends: a workload, and the bytes of each of its requests.

One definition serves every target (the baselines answer the sidecar's paths) and both
generators: the Python one builds requests from it, and the wrk script is written from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import orjson


@dataclass(frozen=True)
class Workload:
    """One kind of request, sent to any target (the baselines serve the same paths).

    body: ``None`` (no body), ``"register"`` (a new agent id per request) or ``"performance"``
    (one task outcome; the server generates the event id).
    """

    name: str
    method: str
    paths: list[str]
    body: str | None = None
    token: str | None = None
    expect: tuple[int, ...] = (200,)
    id_prefix: str = "agent"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Workload:
        data = dict(data)
        data["expect"] = tuple(data.get("expect", (200,)))
        return cls(**data)


PERFORMANCE_BODY = orjson.dumps({"success": True, "quality_score": 0.87, "latency_ms": 1250.0})


def register_body(agent_id: str) -> bytes:
    return orjson.dumps(
        {
            "agent_id": agent_id,
            "name": f"Bench agent {agent_id}",
            "model_family": "gpt",
            "capabilities": {
                "task_types": ["code", "review"],
                "languages": ["python", "go"],
                "specializations": ["backend"],
            },
            "max_concurrent_tasks": 8,
        }
    )


def request_builder(w: Workload, host: str, unique: str) -> Callable[[int], bytes]:
    """A function of the request number giving the bytes of that request."""
    auth = f"Authorization: Bearer {w.token}\r\n" if w.token else ""
    head = f"Host: {host}\r\n{auth}"
    if w.body is None:
        fixed = [f"{w.method} {p} HTTP/1.1\r\n{head}\r\n".encode() for p in w.paths]
        n = len(fixed)
        return lambda i: fixed[i % n]
    if w.body == "performance":
        body = PERFORMANCE_BODY
        pre = [
            f"{w.method} {p} HTTP/1.1\r\n{head}Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
            for p in w.paths
        ]
        n = len(pre)
        return lambda i: pre[i % n]
    if w.body == "register":
        path = w.paths[0]
        prefix = f"{w.method} {path} HTTP/1.1\r\n{head}Content-Type: application/json\r\n"

        def build(i: int) -> bytes:
            body = register_body(f"{w.id_prefix}-{unique}-{i}")
            return f"{prefix}Content-Length: {len(body)}\r\n\r\n".encode() + body

        return build
    raise ValueError(f"unknown body kind {w.body!r}")
