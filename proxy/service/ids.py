"""Unique ids without a random read each: a random prefix drawn once per process and a counter.

`uuid4` reads the system's random source on every call (about 1 us). Ids here only have to be
unique, not unguessable: 64 random bits per process keep two processes (sidecars of a fleet,
or one sidecar before and after a restart) apart, and the counter keeps one process's apart.
"""

from __future__ import annotations

import itertools
import os


class UniqueIds:
    """32 hex digits, like a UUID's: the process's prefix, then a counter."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"
