"""What was done, over HTTP: the state of one write by its operation id, and the audit log.

A write journaled during an outage is answered 202 with an operation id; its client follows it
here until PostgreSQL has it. The audit log is the tenant's record of writes and admin actions,
filtered and paged by the query model below, which the OpenAPI document also describes.
"""

from __future__ import annotations

import re
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from proxy.http import keys
from proxy.http.answer import json_response
from proxy.http.body import read_query
from proxy.http.problems import ProblemError
from proxy.registry.models import ID_PATTERN, PRINTABLE, AuditTime

_ID = re.compile(ID_PATTERN)


async def operation(request: web.Request) -> web.Response:
    op_id = request.match_info["op_id"]
    if not _ID.fullmatch(op_id):
        raise ProblemError(
            422, "op_id is not valid", errors=[{"field": "op_id", "message": "not an op id"}]
        )
    answer = await request.app[keys.SERVICE].operation(request[keys.CONTEXT], op_id)
    return json_response(answer)


class AuditQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Printable, like every actor, action and target the log records (PostgreSQL text cannot
    # even hold a NUL).
    actor: Annotated[str, StringConstraints(max_length=128), PRINTABLE] | None = None
    action: Annotated[str, StringConstraints(max_length=64), PRINTABLE] | None = None
    target: Annotated[str, StringConstraints(max_length=128), PRINTABLE] | None = None
    since: AuditTime | None = None
    until: AuditTime | None = None
    after_id: int = Field(0, ge=0, le=2**63 - 1)
    limit: int = Field(100, ge=1, le=1000)


async def audit(request: web.Request) -> web.Response:
    q = read_query(request, AuditQuery)
    answer = await request.app[keys.SERVICE].audit(request[keys.CONTEXT], **q.model_dump())
    return json_response(answer)
