"""The registry of toxic types, by the name clients use in ``"type"``."""

from __future__ import annotations

from chaos.toxiproxy.toxics.bandwidth import BandwidthToxic
from chaos.toxiproxy.toxics.base import Toxic, ToxicStub, ToxicWrapper
from chaos.toxiproxy.toxics.latency import LatencyToxic
from chaos.toxiproxy.toxics.limit_data import LimitDataToxic
from chaos.toxiproxy.toxics.noop import NoopToxic
from chaos.toxiproxy.toxics.reset_peer import ResetPeerToxic
from chaos.toxiproxy.toxics.slicer import SlicerToxic
from chaos.toxiproxy.toxics.slow_close import SlowCloseToxic
from chaos.toxiproxy.toxics.timeout import TimeoutToxic

__all__ = ["REGISTRY", "Toxic", "ToxicStub", "ToxicWrapper", "new_toxic"]

REGISTRY: dict[str, type[Toxic]] = {
    cls.type_name: cls
    for cls in (
        NoopToxic,
        LatencyToxic,
        BandwidthToxic,
        SlowCloseToxic,
        TimeoutToxic,
        ResetPeerToxic,
        SlicerToxic,
        LimitDataToxic,
    )
}


def new_toxic(type_name: str) -> Toxic | None:
    """A fresh toxic of that type with zeroed attributes, or None for an unknown type."""
    cls = REGISTRY.get(type_name)
    return cls() if cls is not None else None
