"""The schemathesis run's case filter drops exactly the coverage phase's unknown-header cases."""

from __future__ import annotations

import schemathesis
from schemathesis.generation import GenerationMode

from proxy.http.openapi import document
from tests.schemathesis_hooks import filter_case


def _coverage_cases() -> list[schemathesis.Case]:
    schema = schemathesis.openapi.from_dict(document())
    operation = schema["/v1/agents/{agent_id}"]["PATCH"]
    config = schema.config.generation_for(operation=operation)
    return list(
        schema.iter_coverage_cases(
            operation, generation_modes=[GenerationMode.NEGATIVE], generation_config=config
        )
    )


def _has_unknown_header(case: schemathesis.Case) -> bool:
    return any(name.lower().startswith("x-schemathesis") for name in case.headers or {})


def test_only_unknown_header_cases_are_left_out() -> None:
    cases = _coverage_cases()
    dropped = [case for case in cases if not filter_case(None, case)]
    kept = [case for case in cases if filter_case(None, case)]
    assert dropped
    assert all(_has_unknown_header(case) for case in dropped)
    assert not any(_has_unknown_header(case) for case in kept)
    # Invalid values of the declared headers are still sent and must still be rejected.
    assert any((case.headers or {}).get("X-Request-Timeout") == "0" for case in kept)
