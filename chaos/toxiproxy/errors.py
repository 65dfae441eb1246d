"""API errors with the exact messages and status codes of Toxiproxy v2.12.0.

Clients branch on the status code (409 -> ProxyExists, 404 -> NotFound, 400 -> InvalidToxic) and
some print or compare the message, so the strings below are the real server's, byte for byte.
"""

from __future__ import annotations


class ApiError(Exception):
    """An error answered as ``{"error": message, "status": status}``."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def to_json(self) -> dict[str, object]:
        # Field order matters for byte-exact clients: error, then status.
        return {"error": self.message, "status": self.status}


class ProxyAlreadyStarted(Exception):
    """Starting a proxy that is already listening; /reset ignores it, as the real server does."""


ERR_PROXY_NOT_FOUND = "proxy not found"
ERR_PROXY_EXISTS = "proxy already exists"
ERR_INVALID_STREAM = "stream was invalid, can be either upstream or downstream"
ERR_INVALID_TOXIC_TYPE = "invalid toxic type"
ERR_TOXIC_EXISTS = "toxic already exists"
ERR_TOXIC_NOT_FOUND = "toxic not found"


def proxy_not_found() -> ApiError:
    return ApiError(ERR_PROXY_NOT_FOUND, 404)


def proxy_exists() -> ApiError:
    return ApiError(ERR_PROXY_EXISTS, 409)


def invalid_stream() -> ApiError:
    return ApiError(ERR_INVALID_STREAM, 400)


def invalid_toxic_type() -> ApiError:
    return ApiError(ERR_INVALID_TOXIC_TYPE, 400)


def toxic_exists() -> ApiError:
    return ApiError(ERR_TOXIC_EXISTS, 409)


def toxic_not_found() -> ApiError:
    return ApiError(ERR_TOXIC_NOT_FOUND, 404)


def bad_request_body(detail: str) -> ApiError:
    return ApiError(f"bad request body: {detail}", 400)


def missing_field(detail: str) -> ApiError:
    return ApiError(f"missing required field: {detail}", 400)


def invalid_attributes(detail: str) -> ApiError:
    """Our own error for attribute values that make the real server crash (see README)."""
    return ApiError(f"invalid toxic attributes: {detail}", 400)


def server_error(message: str) -> ApiError:
    """Errors the real server passes through untyped (bind and resolver failures) become 500."""
    return ApiError(message, 500)
