"""Reading request bodies and query strings: strict, bounded, with field-level errors."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from proxy.http import keys
from proxy.http.problems import ProblemError
from proxy.settings import RequestSettings

M = TypeVar("M", bound=BaseModel)


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    out = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        out.append({"field": loc, "message": err["msg"]})
    return out


def check_shape(value: Any, *, max_depth: int, max_items: int, depth: int = 1) -> None:
    """Reject pathological JSON before validation spends time on it."""
    if depth > max_depth:
        raise ProblemError(422, f"JSON nested deeper than {max_depth} levels")
    if isinstance(value, dict):
        if len(value) > max_items:
            raise ProblemError(422, f"JSON object with more than {max_items} members")
        for v in value.values():
            if isinstance(v, dict | list):
                check_shape(v, max_depth=max_depth, max_items=max_items, depth=depth + 1)
    elif isinstance(value, list):
        if len(value) > max_items:
            raise ProblemError(422, f"JSON array with more than {max_items} items")
        for v in value:
            if isinstance(v, dict | list):
                check_shape(v, max_depth=max_depth, max_items=max_items, depth=depth + 1)


async def read_json(
    request: web.Request,
    *,
    max_bytes: int,
    max_depth: int,
    max_items: int,
    allow_empty: bool = False,
    read_timeout: float = 10.0,
) -> Any:
    if request.content_length is not None and request.content_length > max_bytes:
        raise ProblemError(413, f"body of {request.content_length} bytes exceeds {max_bytes}")
    if not request.body_exists:
        if allow_empty:
            return {}
        raise ProblemError(400, "a JSON body is required")
    if request.content_type != "application/json":
        raise ProblemError(415, f"Content-Type {request.content_type!r} is not application/json")
    try:
        if request.content.is_eof():
            # Already in whole (a small body comes with its headers): nothing to wait for, so
            # no timer to arm and cancel.
            raw = await request.read()
        else:
            async with asyncio.timeout(read_timeout):
                # The whole body, however many segments it arrives in; aiohttp stops at
                # client_max_size (the app sets it to max_bytes) with a 413.
                raw = await request.read()
    except web.RequestPayloadError as exc:
        raise ProblemError(400, f"body cannot be read: {exc}") from None
    except TimeoutError:
        # A client that trickles its body must not hold a handler (and a deadline) open.
        raise ProblemError(408, f"body not received within {read_timeout:g}s") from None
    if len(raw) > max_bytes:
        raise ProblemError(413, f"body exceeds {max_bytes} bytes")
    if not raw.strip():
        if allow_empty:
            return {}
        raise ProblemError(400, "a JSON body is required")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth" in exc.msg:
            raise ProblemError(422, f"JSON nested deeper than {max_depth} levels") from None
        raise ProblemError(400, f"body is not valid JSON: {exc.msg}") from None
    check_shape(value, max_depth=max_depth, max_items=max_items)
    return value


def validate(model: type[M], value: Any) -> M:
    if not isinstance(value, dict):
        raise ProblemError(422, "body must be a JSON object")
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise ProblemError(
            422, "the request has invalid fields", errors=field_errors(exc)
        ) from None


async def read_model(request: web.Request, model: type[M], *, allow_empty: bool = False) -> M:
    """The request's JSON body as ``model``, within the limits the settings give."""
    return await read_model_within(
        request, model, request.app[keys.SETTINGS].request, allow_empty=allow_empty
    )


async def read_model_within(
    request: web.Request, model: type[M], limits: RequestSettings, *, allow_empty: bool = False
) -> M:
    """`read_model` with the limits given (the front door has no route, so no `request.app`)."""
    raw = await read_json(
        request,
        max_bytes=limits.max_body_bytes,
        max_depth=limits.max_json_depth,
        max_items=limits.max_array_items,
        allow_empty=allow_empty,
        read_timeout=limits.read_timeout_s,
    )
    return validate(model, raw)


def read_query(request: web.Request, model: type[M], *, lists: Collection[str] = ()) -> M:
    """The query string as ``model``: each parameter once, except those named in ``lists``."""
    data: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        if key in lists:
            # Comma-separated, as the document says; an empty value is an empty list, and an
            # empty item (`a,,b`, a lone comma) is refused like any capability that is not one.
            data[key] = [v for raw in values if raw for v in raw.split(",")]
        elif len(values) > 1:
            raise ProblemError(
                422,
                f"{key} given more than once",
                errors=[{"field": key, "message": "give it once"}],
            )
        else:
            data[key] = values[0]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ProblemError(
            422, "the query has invalid parameters", errors=field_errors(exc)
        ) from None
