"""The load generator's own garbage collector, kept out of the latencies it measures.

A full collection of the generator's process walks every object it tracks (tens of thousands
after the imports) and stops its event loop for 20 to 30 ms: every request in flight then looks
that much slower, whichever server answers. With answers at 1,000 a second that is 20 to 30 slow
answers at the same moment of every run, a third of a p99's share, and it showed up as the
server's latency in the p99 of writes at a fixed rate. During a measurement the collector is
off; reference counting still frees everything that is not a cycle, and a run of seconds to
minutes leaves little else.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside the block: what exists is collected once and frozen
    before it, and the collector is back (and what was frozen handed back to it) after it."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()
