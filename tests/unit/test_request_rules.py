"""The rules requests must meet are enforced and documented by the same objects: what a pattern
of the document admits, the models accept, and the other way round."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from proxy.http.openapi import document
from proxy.registry import models

PATTERNS = {
    "text": models.TEXT_PATTERN,
    "capability": models.CAPABILITY_PATTERN,
    "timestamp": models.TIMESTAMP_PATTERN,
    "audit_time": models.AUDIT_TIME_PATTERN,
    "if_match": models.IF_MATCH_PATTERN,
    "id": models.ID_PATTERN,
}


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_patterns_compile_for_python_and_rust(name: str) -> None:
    re.compile(PATTERNS[name])
    jsonschema_rs.validator_for({"type": "string", "pattern": PATTERNS[name]})


def test_the_printable_class_excludes_only_what_python_calls_unprintable() -> None:
    allowed = re.compile(f"[^{models._UNPRINTABLE}]")
    for code in range(0x10000):
        if 0xD800 <= code <= 0xDFFF:
            continue  # surrogates cannot arrive: not in UTF-8, and JSON's escapes of them fail
        char = chr(code)
        if char.isprintable():
            assert allowed.fullmatch(char), hex(code)
    for char in "\x00\x1b\x7f\x85\xa0\xad\u200b\u200d\u202e\u2028\u3000\ufeff\uffff":
        assert not allowed.fullmatch(char), repr(char)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("Coder", True),
        ("a b", True),
        ("\U0001f980", True),
        ("שלום", True),
        (" lead", False),
        ("trail ", False),
        ("a\tb", False),
        ("a\u200bb", False),
        ("a\u202eb", False),
    ],
)
def test_names_are_printable_without_edge_spaces(value: str, ok: bool) -> None:
    body = {"name": value}
    if ok:
        assert models.PatchRequest.model_validate(body).name == value
        assert re.fullmatch(models.TEXT_PATTERN, value)
    else:
        with pytest.raises(ValidationError, match="printable"):
            models.PatchRequest.model_validate(body)
        assert not re.fullmatch(models.TEXT_PATTERN, value)


def test_a_comma_is_no_part_of_a_capability() -> None:
    with pytest.raises(ValidationError, match="comma"):
        models.Capabilities.model_validate({"task_types": ["a,b"]})


@settings(max_examples=500, suppress_health_check=list(HealthCheck), deadline=None)
@given(st.from_regex(models.TIMESTAMP_PATTERN, fullmatch=True))
def test_every_timestamp_the_pattern_admits_parses(value: str) -> None:
    parsed = datetime.fromisoformat(value)
    body = {"active_tasks": 1, "queued_tasks": 0, "observed_at": value}
    if parsed <= datetime.now(UTC):
        assert models.LoadRequest.model_validate(body).observed_at == parsed
    else:
        with pytest.raises(ValidationError, match="future"):
            models.LoadRequest.model_validate(body)


def test_the_timestamp_pattern_knows_the_calendar() -> None:
    day = date(2000, 1, 1)
    while day.year < 2101:
        assert re.fullmatch(models.TIMESTAMP_PATTERN, f"{day}T12:00:00Z"), day
        day += timedelta(days=1)
    for value in (
        "1999-12-31T23:59:59Z",
        "2100-02-29T00:00:00Z",
        "2023-02-29T00:00:00Z",
        "2023-04-31T00:00:00Z",
        "2023-01-01T24:00:00Z",
        "2023-01-01T00:00:60Z",
        "2023-01-01T00:00:00",
        "2023-01-01 00:00:00Z",
        "2023-01-01T00:00:00.1234567Z",
        "2023-01-01T00:00:00+24:00",
    ):
        assert not re.fullmatch(models.TIMESTAMP_PATTERN, value), value
        with pytest.raises(ValidationError):
            models.HeartbeatRequest.model_validate({"observed_at": value})
    assert re.fullmatch(models.TIMESTAMP_PATTERN, "2400-02-29T00:00:00.5+05:30")


@pytest.mark.parametrize("value", [1_700_000_000, 1.5, True, None, ["2024-01-01T00:00:00Z"]])
def test_a_timestamp_is_a_string(value: Any) -> None:
    with pytest.raises(ValidationError):
        models.LoadRequest.model_validate(
            {"active_tasks": 1, "queued_tasks": 0, "observed_at": value}
        )


@pytest.mark.parametrize(
    ("value", "accepted"),
    [(797, True), (797.0, True), (7.5, False), ("797", False), (True, False), (-1, False)],
)
def test_integers_are_numbers_without_a_fraction(value: Any, accepted: bool) -> None:
    body = {"active_tasks": value, "queued_tasks": 0, "observed_at": "2024-01-01T00:00:00Z"}
    if accepted:
        assert models.LoadRequest.model_validate(body).active_tasks == int(value)
    else:
        with pytest.raises(ValidationError):
            models.LoadRequest.model_validate(body)


@pytest.mark.parametrize("value", ['"12"', 'W/"12"', "12", "*"])
def test_if_match_forms(value: str) -> None:
    assert re.fullmatch(models.IF_MATCH_PATTERN, value)


@pytest.mark.parametrize("value", ['"12', '12"', "W/12", '"1234567890123456789"', "", "1 2"])
def test_if_match_refusals(value: str) -> None:
    assert not re.fullmatch(models.IF_MATCH_PATTERN, value)


def test_the_document_states_the_rules() -> None:
    doc = document()
    schemas = doc["components"]["schemas"]
    patch = schemas["PatchRequest"]
    assert patch["minProperties"] == 1
    assert "null" not in json.dumps(patch["properties"])  # a field given is never null
    load = schemas["LoadRequest"]["properties"]
    assert load["active_tasks"] == {
        "maximum": models.MAX_ACTIVE_TASKS,
        "minimum": 0,
        "title": "Active Tasks",
        "type": "integer",
    }
    assert load["observed_at"]["pattern"] == models.TIMESTAMP_PATTERN
    assert "5 minutes" in load["observed_at"]["description"]
    caps = schemas["Capabilities"]["properties"]
    assert caps["languages"]["uniqueItems"] is True
    assert caps["languages"]["items"]["pattern"] == models.CAPABILITY_PATTERN
    query = {p["name"]: p for p in doc["paths"]["/v1/agents"]["get"]["parameters"]}
    assert query["specializations"]["explode"] is False
    assert query["specializations"]["schema"]["uniqueItems"] is True
    assert query["task_type"]["schema"]["pattern"] == models.CAPABILITY_PATTERN
    assert "null" not in json.dumps(query["max_utilization"]["schema"])
    patch_op = doc["paths"]["/v1/agents/{agent_id}"]["patch"]
    headers = {p["name"]: p["schema"] for p in patch_op["parameters"] if p["in"] == "header"}
    assert headers["If-Match"]["pattern"] == models.IF_MATCH_PATTERN
    assert headers["X-Request-Timeout"]["type"] == "integer"
    assert headers["X-Request-Timeout"]["minimum"] == 1
    for status in ("400", "401", "403", "404", "412", "413", "415", "422", "429", "503", "504"):
        content = patch_op["responses"][status]["content"]
        assert list(content) == ["application/problem+json"], status
    audit = {p["name"]: p["schema"] for p in doc["paths"]["/v1/audit"]["get"]["parameters"]}
    assert audit["since"]["pattern"] == models.AUDIT_TIME_PATTERN
    assert audit["limit"]["maximum"] == 1000
