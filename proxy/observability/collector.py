"""Python's cyclic garbage collector, kept from pausing the event loop for tens of milliseconds.

A full collection walks every container object the collector tracks that is not frozen. The
sidecar's long-lived state is mostly the replica: an `AgentRecord` per agent and the orders they
are filed in. At start-up the server collects once and freezes what is there (`gc.freeze`), but
every agent registered or changed after that is a new object the collector keeps walking. Under
1,000 registrations a second, full collections came every few seconds and each stopped every
request for 25 to 55 ms with 20,000 to 30,000 agents (a third of all answers slower than 5 ms
came in them). The records themselves are now kept out of the collector's sight altogether
(`proxy.store.untracked`); what it still walks per agent is their entries in the replica's
dicts and orders.

`Refreezer` is a collector callback: when a full collection ends, what survived it is frozen, so
the next one walks only what was promoted since. Frozen objects are still freed when their last
reference goes (reference counting is untouched); what freezing gives up is reclaiming *cycles*
among them. So every `full_every_s` the frozen objects are handed back to the collector
(`gc.unfreeze`) and the next full collection walks everything once, reclaiming any such cycle,
before its survivors are frozen again: a full pause once per period instead of every few seconds.

Written by hand: it is three calls of the standard library's `gc`, and the policy is the
sidecar's own.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Refreezer:
    """A `gc.callbacks` entry; `install` adds it, `remove` takes it away."""

    full_every_s: float
    """How often the next full collection walks every object; > 0."""
    clock: Callable[[], float] = time.monotonic
    _since: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if self.full_every_s <= 0:
            raise ValueError("full_every_s must be > 0")
        self._since = self.clock()

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "stop" or info.get("generation") != 2:
            return
        now = self.clock()
        if now - self._since >= self.full_every_s:
            # The next full collection walks what was frozen too, and is frozen after it.
            gc.unfreeze()
            self._since = now
            return
        # Right after a full collection nothing is left in the younger generations: freezing
        # takes exactly what survived it.
        gc.freeze()

    def install(self) -> Refreezer:
        if self not in gc.callbacks:
            gc.callbacks.append(self)
        return self

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)


def stats() -> dict[str, int]:
    """Objects frozen now, and full collections since start (any policy)."""
    return {
        "python_frozen_objects": gc.get_freeze_count(),
        "python_full_collections": gc.get_stats()[2]["collections"],
    }
