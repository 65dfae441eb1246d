"""RFC 9457 problem documents: every error the sidecar answers has this shape."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from proxy.registry.errors import PROBLEM_BASE, RegistryError

PROBLEM_TYPE = "application/problem+json"

# status -> (slug, title) for problems raised by the HTTP layer itself
GENERIC: dict[int, tuple[str, str]] = {
    400: ("malformed-request", "Malformed request"),
    401: ("unauthorized", "Missing or unknown bearer token"),
    403: ("forbidden", "Not allowed for this token"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    408: ("request-timeout", "Request not received in time"),
    409: ("conflict", "Conflict"),
    412: ("precondition-failed", "Precondition failed"),
    413: ("body-too-large", "Request body too large"),
    415: ("unsupported-media-type", "Content-Type must be application/json"),
    422: ("invalid-request", "Request has invalid fields"),
    429: ("rate-limited", "Too many requests"),
    431: ("headers-too-large", "Request headers too large"),
    500: ("internal-error", "Internal error"),
    503: ("database-unavailable", "Database unavailable"),
    504: ("deadline-exceeded", "Deadline exceeded"),
}


def problem(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    title: str | None = None,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    extensions: dict[str, str] | None = None,
) -> web.Response:
    default_slug, default_title = GENERIC.get(status, ("error", "Error"))
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + (slug or default_slug),
        "title": title or default_title,
        "status": status,
        "detail": detail,
    }
    if extensions:
        body.update({k: v for k, v in extensions.items() if k not in body})
    if errors is not None:
        body["errors"] = errors
    return web.Response(
        status=status, body=orjson.dumps(body), content_type=PROBLEM_TYPE, headers=headers
    )


def from_error(exc: RegistryError) -> web.Response:
    return problem(
        exc.status,
        exc.detail,
        slug=exc.slug,
        title=exc.title,
        headers=exc.headers or None,
        extensions=exc.extensions or None,
    )


class ProblemError(Exception):
    """Raised by handlers and middleware to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        slug: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.headers = headers
        self.slug = slug

    def response(self) -> web.Response:
        return problem(
            self.status, self.detail, errors=self.errors, headers=self.headers, slug=self.slug
        )
