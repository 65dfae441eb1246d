"""Typed keys for what the application and each request carry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from proxy.http.auth import Principal, TokenStore
from proxy.http.ratelimit import RateLimiter
from proxy.observability.metrics import Metrics
from proxy.resilience.probe import HealthProbe
from proxy.service import RegistryService, RequestContext
from proxy.settings import Settings
from proxy.store.replica_sync import ReplicaSync

if TYPE_CHECKING:
    from proxy.http.middleware import Gate

SETTINGS = web.AppKey("settings", Settings)
TOKENS = web.AppKey("tokens", TokenStore)
METRICS = web.AppKey("metrics", Metrics)
SERVICE = web.AppKey("service", RegistryService)
LIMITER: web.AppKey[RateLimiter | None] = web.AppKey("limiter")
PROBE = web.AppKey("probe", HealthProbe)
SYNC: web.AppKey[ReplicaSync | None] = web.AppKey("replica_sync")
GATE: web.AppKey[Gate] = web.AppKey("gate")

PRINCIPAL = web.RequestKey("principal", Principal)
CONTEXT = web.RequestKey("context", RequestContext)
REQUEST_ID = web.RequestKey("request_id", str)
