"""Typed keys for what the application and each request carry.

Only types are imported here, from modules that do not import this one back, so that every
module of the package can read its keys without an import cycle. The gate keeps its own key
(`proxy.http.middleware.GATE`): the gate reads the request keys below, so it cannot be imported
here.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from proxy.http.auth import Principal, TokenStore
from proxy.observability.metrics import Metrics
from proxy.observability.spans import ServerSpan
from proxy.service import RegistryService, RequestContext, Sidecar
from proxy.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
TOKENS = web.AppKey("tokens", TokenStore)
METRICS = web.AppKey("metrics", Metrics)
SERVICE = web.AppKey("service", RegistryService)
SIDECAR = web.AppKey("sidecar", Sidecar)
# The OpenAPI document, encoded: it describes the route table, which holds the handler serving
# it, so the handler finds it here rather than importing it.
API_DOCUMENT: web.AppKey[Callable[[], bytes]] = web.AppKey("api_document")

PRINCIPAL = web.RequestKey("principal", Principal)
CONTEXT = web.RequestKey("context", RequestContext)
REQUEST_ID = web.RequestKey("request_id", str)
SPAN: web.RequestKey[ServerSpan] = web.RequestKey("span")
"""The request's span; set only while tracing is on."""
