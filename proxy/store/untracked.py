"""Keeping the replica's records out of the cyclic garbage collector's walks.

The replica holds one `AgentRecord` per agent for as long as the agent lives. A record can never
be part of a reference cycle: its fields are strings, numbers, datetimes and tuples of them, and
its caches are tuples of strings and bytes. Yet CPython tracks every instance of a class with
slots, so every collection that reaches the generation a record sits in visits it and each of
its fields. With the records frozen between full collections (`proxy.observability.collector`),
that left the walk of everything every `gc_full_interval_s`: 14 ms with 10,000 agents, 65 ms
with 100,000, 106 ms with 200,000, every answer waiting for it. And each record registered
under load was walked by the young collections it survived before it got there.

`untrack` takes such an object out of the collector's lists. Reference counting still frees it
when its last reference goes; what it gives up is having cycles through it found, and it has
none. Only objects whose every reachable part is immutable may be passed.

Written by hand: the standard library has no way to untrack an object from Python. The C API's
`PyObject_GC_UnTrack` does it, and `ctypes.pythonapi` reaches it (holding the GIL, as the C API
requires). An interpreter without it (not CPython) leaves objects tracked, as before.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

__all__ = ["untrack"]


def _c_untrack() -> Callable[[object], None] | None:
    try:
        fn = ctypes.pythonapi.PyObject_GC_UnTrack
    except (AttributeError, ValueError):
        return None
    fn.argtypes = [ctypes.py_object]
    fn.restype = None
    return fn


_UNTRACK = _c_untrack()


def untrack(obj: object) -> None:
    """Stop the cyclic collector from walking `obj` (which must not be able to be in a cycle).
    Untracking an object that is not tracked does nothing."""
    if _UNTRACK is not None:
        _UNTRACK(obj)
