"""Replica snapshot file: the last known copy of the registry, for a warm start without PostgreSQL.

The payload is opaque (any orjson-serialisable dict); `watermark` is whatever the caller uses to
know how fresh the copy is. The snapshot is a cache: a missing, damaged or foreign file reads as
None and the caller resyncs, so reading never raises for bad content.

On-disk format (big-endian): a 36-byte header `magic b"RPSNAP" | format version u16 |
watermark i64 | written_at f64 | body length u64 | CRC-32 u32` then the orjson body. The CRC
covers the header fields before it and the body, so a partial or bit-flipped file is detected.

Writes are atomic: the new file is written and fsynced under a temporary name in the same
directory, renamed over the old one, and the directory is fsynced; a crash or a failed write leaves
the previous snapshot untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson
import structlog

from proxy.registry.agent import AgentRecord

__all__ = [
    "SNAPSHOT_FORMAT_VERSION",
    "Snapshot",
    "encode_in_steps",
    "read_snapshot",
    "write_snapshot",
    "write_snapshot_body",
]

_log = structlog.get_logger(__name__)

_MAGIC: Final = b"RPSNAP"
SNAPSHOT_FORMAT_VERSION: Final = 1
_HEADER: Final = struct.Struct(">6sHqdQI")
_CHUNK: Final = 1024 * 1024

# One temporary name per target keeps crashed writes from piling up files; this lock keeps two
# writers in this process from sharing it. Other processes are kept out of the directory by the
# journal's lock.
_write_lock = threading.Lock()


@dataclass(frozen=True)
class Snapshot:
    data: dict[str, Any]
    watermark: int
    written_at: float


def _crc(version: int, watermark: int, written_at: float, body: bytes) -> int:
    fields = struct.pack(">HqdQ", version, watermark, written_at, len(body))
    return zlib.crc32(body, zlib.crc32(_MAGIC + fields))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_snapshot(
    directory: Path, data: dict[str, Any], *, watermark: int, name: str = "replica.snapshot"
) -> Path:
    """Atomically replace `directory/name` with `data`; returns the path.

    Raises OSError when the file cannot be written (the previous snapshot is then intact),
    TypeError when `data` is not serialisable and ValueError for a watermark beyond 64 bits.
    """
    return write_snapshot_body(directory, orjson.dumps(data), watermark=watermark, name=name)


def write_snapshot_body(
    directory: Path, body: bytes, *, watermark: int, name: str = "replica.snapshot"
) -> Path:
    """`write_snapshot` of a body already encoded (by `encode_in_steps`)."""
    if not -(2**63) <= watermark < 2**63:
        raise ValueError("watermark must fit in a signed 64-bit integer")
    directory = Path(directory)
    target = directory / name
    written_at = time.time()
    header = _HEADER.pack(
        _MAGIC,
        SNAPSHOT_FORMAT_VERSION,
        watermark,
        written_at,
        len(body),
        _crc(SNAPSHOT_FORMAT_VERSION, watermark, written_at, body),
    )
    tmp = directory / f".{name}.tmp"
    with _write_lock:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            try:
                _write_all(fd, header)
                _write_all(fd, body)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(directory)
    return target


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    for start in range(0, len(view), _CHUNK):
        chunk = view[start : start + _CHUNK]
        while chunk:
            chunk = chunk[os.write(fd, chunk) :]


def read_snapshot(directory: Path, *, name: str = "replica.snapshot") -> Snapshot | None:
    """The stored snapshot, or None when it is missing, unreadable, damaged or of another format."""
    path = Path(directory) / name
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        _log.warning("replica_snapshot_unreadable", path=str(path), reason=str(exc))
        return None
    snapshot_or_reason = _decode(raw)
    if isinstance(snapshot_or_reason, str):
        _log.warning("replica_snapshot_unreadable", path=str(path), reason=snapshot_or_reason)
        return None
    return snapshot_or_reason


def _decode(raw: bytes) -> Snapshot | str:
    if len(raw) < _HEADER.size:
        return f"file of {len(raw)} bytes is shorter than the header"
    magic, version, watermark, written_at, length, crc = _HEADER.unpack_from(raw)
    if magic != _MAGIC:
        return "not a replica snapshot (bad magic)"
    if version != SNAPSHOT_FORMAT_VERSION:
        return f"unsupported snapshot format version {version}"
    body = raw[_HEADER.size :]
    if len(body) != length:
        return f"body is {len(body)} bytes, header says {length}"
    if _crc(version, watermark, written_at, body) != crc:
        return "checksum mismatch"
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return f"body is not valid JSON: {exc}"
    if not isinstance(data, dict):
        return "body is not a JSON object"
    return Snapshot(data=data, watermark=watermark, written_at=written_at)


async def encode_in_steps(
    view: tuple[list[str], bool, list[AgentRecord]],
    *,
    rows_per_step: int = 100,
    pause_s: float = 0.002,
) -> bytes:
    """The snapshot body of `Replica.snapshot_view()`: `{"tenants", "partial", "agents"}`, each
    agent as `AgentRecord.to_snapshot`, encoded on the event loop `rows_per_step` agents at a
    time, yielding between steps.

    On a worker thread the encoding still held the interpreter: orjson encodes without letting
    it go, so with 30,000 agents every request waited 100 to 200 ms once per snapshot. A step of
    100 agents takes about 0.3 ms, and `pause_s` between steps leaves the event loop to the
    requests: it is background work, and a loop already half busy with them queued answers
    for tens of milliseconds behind steps that took more than a fraction of it (30,000 agents
    take about 0.7 s of wall time, 0.1 s of CPU)."""
    tenants, partial, records = view
    parts = [
        b'{"tenants":',
        orjson.dumps(tenants),
        b',"partial":',
        orjson.dumps(partial),
        b',"agents":[',
    ]
    for start in range(0, len(records), rows_per_step):
        if start:
            parts.append(b",")
            await asyncio.sleep(pause_s)
        rows = [rec.to_snapshot() for rec in records[start : start + rows_per_step]]
        parts.append(orjson.dumps(rows)[1:-1])
    parts.append(b"]}")
    return b"".join(parts)
