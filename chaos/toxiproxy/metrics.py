"""``GET /metrics``: the counters Toxiproxy exposes with ``-proxy-metrics``/``-runtime-metrics``.

Byte counters are added when a link ends, as in Toxiproxy, not while it is live. A private
registry keeps these series out of any other registry in the same process; the counters are
exposed without ``_created`` series, which the Go client library does not emit either.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from chaos.toxiproxy.link import Link
from chaos.toxiproxy.proxy import Proxy

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LABELS = ("direction", "listener", "proxy", "upstream")


_Key = tuple[str, str, str, str]


def _counter(name: str, documentation: str, values: dict[_Key, float]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=_LABELS)
    for key, value in sorted(values.items()):
        family.add_metric(key, value)
    return family


class _ProxyBytes(Collector):
    def __init__(self) -> None:
        self.received: dict[_Key, float] = {}
        self.sent: dict[_Key, float] = {}

    def collect(self) -> Iterator[Metric]:
        yield _counter(
            "toxiproxy_proxy_received_bytes",
            "Number of bytes received from the source of a link",
            self.received,
        )
        yield _counter(
            "toxiproxy_proxy_sent_bytes",
            "Number of bytes sent to the destination of a link",
            self.sent,
        )


class _HandlerErrors(Collector):
    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "promhttp_metric_handler_errors",
            "Total number of internal errors encountered by the promhttp metric handler.",
            labels=("cause",),
        )
        family.add_metric(("encoding",), 0)
        family.add_metric(("gathering",), 0)
        yield family


class Metrics:
    def __init__(self, *, proxy_metrics: bool, runtime_metrics: bool) -> None:
        self.proxy_metrics = proxy_metrics
        self.runtime_metrics = runtime_metrics
        self.registry = CollectorRegistry(auto_describe=True)
        self._bytes = _ProxyBytes()
        self.registry.register(_HandlerErrors())
        if proxy_metrics:
            self.registry.register(self._bytes)
        if runtime_metrics:
            # The Python process and runtime stand in for Go's runtime collectors.
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    @property
    def enabled(self) -> bool:
        return self.proxy_metrics or self.runtime_metrics

    def link_done(self, proxy: Proxy, link: Link) -> None:
        if not self.proxy_metrics:
            return
        key = (link.direction.label, proxy.listen, proxy.name, proxy.upstream)
        self._bytes.received[key] = self._bytes.received.get(key, 0.0) + link.received
        self._bytes.sent[key] = self._bytes.sent.get(key, 0.0) + link.sent

    def render(self) -> bytes:
        return generate_latest(self.registry)
