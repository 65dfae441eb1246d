"""The HTTP application, before the app factory gives it its resources: the middlewares and the
gate behind them, the routes, and what the handlers read from the app besides the service.

`proxy.app.create_app` builds the application here, then adds the resources (pool, journal,
replica, service, probe, ...) as cleanup contexts; the HTTP layer stays unaware of how they are
made.
"""

from __future__ import annotations

from aiohttp import web

from proxy.http import keys, openapi
from proxy.http.auth import TokenStore
from proxy.http.middleware import GATE, Gate, guard, observe
from proxy.http.ratelimit import RateLimiter
from proxy.http.routes import ROLE_BY_NAME, add_routes
from proxy.observability.metrics import Metrics
from proxy.observability.spans import ServerSpans
from proxy.service.ids import UniqueIds
from proxy.settings import Settings


def web_application(
    settings: Settings,
    *,
    tokens: TokenStore,
    metrics: Metrics,
    spans: ServerSpans | None = None,
) -> web.Application:
    app = web.Application(
        middlewares=[observe, guard],
        client_max_size=settings.request.max_body_bytes,
        handler_args={
            "max_field_size": settings.request.max_header_bytes,
            "max_line_size": settings.request.max_header_bytes,
        },
    )
    app[keys.SETTINGS] = settings
    app[keys.TOKENS] = tokens
    app[keys.METRICS] = metrics
    app[keys.API_DOCUMENT] = openapi.encoded
    rl = settings.rate_limit
    app[GATE] = Gate(
        settings=settings,
        tokens=tokens,
        metrics=metrics,
        limiter=RateLimiter(rate_per_s=rl.rate_per_s, burst=rl.burst) if rl.enabled else None,
        ids=UniqueIds(),
        roles=ROLE_BY_NAME,
        spans=spans,
    )
    add_routes(app)
    return app
