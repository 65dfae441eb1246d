"""An agent's encoded document is cached per record and status, and equals encoding it afresh."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import orjson

from proxy.registry.agent import HEARTBEAT_TIMEOUT, AgentRecord
from proxy.registry.apply import apply_write

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _record() -> AgentRecord:
    body = {
        "agent_id": "a1",
        "name": "A",
        "model_family": "gpt",
        "capabilities": {"task_types": ["code"], "languages": ["go"], "specializations": []},
    }
    rec = apply_write("register", "t", {"body": body}, None, NOW)
    assert rec is not None
    return rec


def test_encoded_document_is_the_one_encoded_afresh() -> None:
    rec = _record()
    cached = rec.public_json(NOW)
    assert rec.public_json(NOW) is cached
    assert replace(rec).public_json(NOW) == cached


def test_encoded_once_per_status() -> None:
    rec = _record()
    first = rec.public_json(NOW)
    assert rec.public_json(NOW + timedelta(seconds=1)) is first
    later = NOW + HEARTBEAT_TIMEOUT + timedelta(seconds=1)
    stale = rec.public_json(later)
    assert orjson.loads(stale)["status"] == "unresponsive"
    assert orjson.loads(first)["status"] == "active"
    assert orjson.loads(rec.public_json(NOW))["status"] == "active"


def test_a_new_version_is_encoded_anew() -> None:
    rec = _record()
    rec.public_json(NOW)
    renamed = replace(rec, name="B", version=2)
    assert orjson.loads(renamed.public_json(NOW))["name"] == "B"
    assert renamed == replace(rec, name="B", version=2)  # the cache takes no part in equality
