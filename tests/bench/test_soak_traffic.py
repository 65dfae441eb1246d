"""The soak names each refusal by its problem type, not only by its status."""

from __future__ import annotations

from bench.soak_traffic import problem_type
from proxy.registry.errors import PROBLEM_BASE


def test_a_problem_is_named_by_the_last_segment_of_its_type() -> None:
    assert problem_type({"type": PROBLEM_BASE + "overloaded", "status": 503}) == "overloaded"
    assert problem_type({"type": "about:blank"}) == "about:blank"


def test_an_answer_that_is_not_a_problem_is_named_as_unknown() -> None:
    assert problem_type("Service Unavailable") == "?"
    assert problem_type(None) == "?"
    assert problem_type({"status": 503}) == "?"
    assert problem_type({"type": ""}) == "?"
