"""Typed keys for what the application and each request carry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    pass

SETTINGS = web.AppKey["Settings"]("settings")
TOKENS = web.AppKey["TokenStore"]("tokens")
METRICS = web.AppKey["Metrics"]("metrics")
SERVICE = web.AppKey["RegistryService"]("service")
LIMITER = web.AppKey["RateLimiter | None"]("limiter")
PROBE = web.AppKey["HealthProbe"]("probe")
SYNC = web.AppKey["ReplicaSync | None"]("replica_sync")
STARTED = web.AppKey["float"]("started")

PRINCIPAL = web.RequestKey["Principal"]("principal")
CONTEXT = web.RequestKey["RequestContext"]("context")
REQUEST_ID = web.RequestKey[str]("request_id")
