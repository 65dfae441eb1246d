"""A journaled write as the replica's overlay holds it until the replay settles it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from proxy.registry.requests import WriteKind


@dataclass(slots=True)
class PendingWrite:
    op_id: str
    kind: str
    payload: dict[str, Any]
    received_at: datetime
    uncertain: bool = False
    """The write reached PostgreSQL before it was journaled and its fate is unknown (the
    connection died mid-call). PostgreSQL may hold it already, and rows from there may show it
    at any moment, so the overlay leaves it out: it shows once the replay settles it."""
    counted: bool = False
    """A performance post whose event PostgreSQL has counted already (a retry): the overlay
    leaves it out, as the replay will."""

    @property
    def event_id(self) -> str | None:
        """The performance event this write reports, if it is one that names its event."""
        if self.kind != WriteKind.PERFORMANCE:
            return None
        event_id = self.payload["body"].get("event_id")
        return event_id if isinstance(event_id, str) else None
