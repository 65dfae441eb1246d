"""Schemathesis hooks for runs against the sidecar (`tests.schemathesis_run`, the pytest form).

Two rules of the API depend on state a schema cannot carry, so generated requests are brought in
line with them before they are sent; everything else is generated from the document as it is:

- An Idempotency-Key names one request: reused with a different one it is answered 422, as the
  document says. Generated keys are drawn from a small space and would collide across unrelated
  requests, so each valid key gets a unique suffix (an invalid one stays invalid).
- `observed_at` may be at most 5 minutes ahead of the sidecar's clock, which the document states
  in words: a date-time the pattern admits but the clock does not yet is replaced by the present.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import schemathesis
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation.meta import CoveragePhaseData, CoverageScenario

from proxy.registry.models import ID_PATTERN, TIMESTAMP_PATTERN

_ID = re.compile(ID_PATTERN)
_TIMESTAMP = re.compile(TIMESTAMP_PATTERN)


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    """Leave out the coverage phase's "unknown header" cases.

    An HTTP server ignores header fields it does not know (RFC 9110, section 5.1), and so does the
    sidecar. Schemathesis exempts such a case when the unknown header is its only violation, but it
    marks the path as violated too when the case was derived from an invalid path id it then
    replaced with a real one, so a valid request with one extra header that meets an existing agent
    is reported as "invalid data accepted" (seen on `PATCH /v1/agents/0` once an agent `0` existed
    and the 1 ms deadline had not yet expired). Nothing else is dropped.
    """
    meta = case.meta
    data = meta.phase.data if meta is not None else None
    return not (
        isinstance(data, CoveragePhaseData)
        and data.scenario is CoverageScenario.OBJECT_UNEXPECTED_PROPERTIES
        and data.parameter_location is ParameterLocation.HEADER
    )


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Every phase's requests pass here, right before they are sent."""
    headers = case.headers
    if headers:
        for name, value in list(headers.items()):
            if name.lower() != "idempotency-key" or not isinstance(value, str):
                continue
            if _ID.fullmatch(value):
                headers[name] = f"{value[:95]}-{uuid.uuid4().hex}"
    body = case.body
    if isinstance(body, dict):
        value = body.get("observed_at")
        if isinstance(value, str) and _TIMESTAMP.fullmatch(value):
            now = datetime.now(UTC)
            if datetime.fromisoformat(value) > now:
                body["observed_at"] = now.isoformat()
