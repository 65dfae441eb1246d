"""A service `Answer` as HTTP: its header fields and its body, the same whichever way it is sent.

Handlers send an answer as an aiohttp `web.Response` (`json_response`); the front door writes the
hot read's answer to the connection itself (`proxy.http.direct`). Both take the header fields
from `answer_headers` and the body from `answer_body`, so the two ways cannot drift apart.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from proxy.http.problems import PROBLEM_TYPE
from proxy.service import Answer


def answer_headers(answer: Answer) -> dict[str, str]:
    """Where the answer came from, the service's own fields, and the type of a body if any."""
    headers = {"X-Registry-Source": answer.source, **answer.headers}
    if answer.status != 204 and answer.body is not None:
        headers["Content-Type"] = PROBLEM_TYPE if answer.status >= 400 else "application/json"
    return headers


def answer_body(answer: Answer) -> bytes | None:
    """The encoded body; None for an answer without one (204, or no body given)."""
    body = answer.body
    if answer.status == 204 or body is None:
        return None
    return body if isinstance(body, bytes) else orjson.dumps(body)


def json_response(answer: Answer) -> web.Response:
    # The header itself, not content_type=: aiohttp's content-type property parses and rebuilds.
    headers = answer_headers(answer)
    body = answer_body(answer)
    if body is None:
        return web.Response(status=answer.status, headers=headers)
    return web.Response(status=answer.status, body=body, headers=headers)
