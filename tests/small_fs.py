"""A tiny tmpfs mounted for one test, to fill a disk for real (needs root; skips otherwise)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_filesystem(directory: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` (e.g. "256k") on `directory` for the duration of the block."""
    if os.geteuid() != 0:
        pytest.skip("filling a disk needs a small tmpfs, and mounting one needs root")
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs on {directory}: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        done = subprocess.run(["umount", str(directory)], capture_output=True, check=False)
        if done.returncode != 0:
            # Still busy (a descriptor not yet closed): detach it now, it goes once released.
            subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False)
