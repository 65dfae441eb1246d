"""The replica snapshot file: round trip, damage detection, atomic replacement."""

from __future__ import annotations

import errno
import os
import stat
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from proxy.store.snapshot import SNAPSHOT_FORMAT_VERSION, read_snapshot, write_snapshot

NAME = "replica.snapshot"


def _handmade(
    body: bytes, *, version: int = SNAPSHOT_FORMAT_VERSION, magic: bytes = b"RPSNAP"
) -> bytes:
    """A snapshot file built independently of the writer, with a correct checksum."""
    written_at = 1_700_000_000.0
    fields = struct.pack(">HqdQ", version, 7, written_at, len(body))
    crc = zlib.crc32(body, zlib.crc32(magic + fields))
    return struct.pack(">6sHqdQI", magic, version, 7, written_at, len(body), crc) + body


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != NAME)


def test_round_trip(tmp_path: Path) -> None:
    data: dict[str, Any] = {
        "tenants": {"t1": {"a1": {"name": "Ä agent", "tags": ["x", "y"], "load": 0.5}}},
        "count": 1,
    }
    before = time.time()
    path = write_snapshot(tmp_path / "dir", data, watermark=42)
    assert path == tmp_path / "dir" / NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "dir").stat().st_mode) == 0o700

    snapshot = read_snapshot(tmp_path / "dir")
    assert snapshot is not None
    assert snapshot.data == data
    assert snapshot.watermark == 42
    assert before <= snapshot.written_at <= time.time()
    assert _leftovers(tmp_path / "dir") == []


def test_replacing_keeps_only_the_newest(tmp_path: Path) -> None:
    write_snapshot(tmp_path, {"v": 1}, watermark=1)
    write_snapshot(tmp_path, {"v": 2}, watermark=2)
    write_snapshot(tmp_path, {"v": 0}, watermark=-5, name="other.snapshot")
    newest = read_snapshot(tmp_path)
    assert newest is not None
    assert (newest.data, newest.watermark) == ({"v": 2}, 2)
    other = read_snapshot(tmp_path, name="other.snapshot")
    assert other is not None
    assert other.watermark == -5
    assert _leftovers(tmp_path) == ["other.snapshot"]


def test_large_snapshot(tmp_path: Path) -> None:
    agents = {
        f"agent-{i}": {"name": f"agent {i}", "task_types": ["code", "review"], "version": i}
        for i in range(100_000)
    }
    write_snapshot(tmp_path, {"agents": agents}, watermark=100_000)
    snapshot = read_snapshot(tmp_path)
    assert snapshot is not None
    assert snapshot.data["agents"] == agents


def test_missing_is_none_without_warning(tmp_path: Path) -> None:
    with capture_logs() as logs:
        assert read_snapshot(tmp_path) is None
        assert read_snapshot(tmp_path / "no-such-dir") is None
    assert logs == []


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        write_snapshot(tmp_path, {"bad": {1, 2}}, watermark=1)
    with pytest.raises(ValueError):
        write_snapshot(tmp_path, {}, watermark=2**63)
    assert list(tmp_path.iterdir()) == []


def _corruptions(valid: bytes) -> dict[str, bytes]:
    flipped = bytearray(valid)
    flipped[-3] ^= 0x20
    header_flip = bytearray(valid)
    header_flip[10] ^= 0x01  # inside the watermark
    return {
        "empty": b"",
        "short header": valid[:20],
        "truncated body": valid[:-1],
        "extra bytes": valid + b"x",
        "flipped body": bytes(flipped),
        "flipped header": bytes(header_flip),
        "foreign magic": _handmade(b"{}", magic=b"NOTSNP"),
        "newer version": _handmade(b"{}", version=SNAPSHOT_FORMAT_VERSION + 1),
        "not json": _handmade(b"{not json"),
        "not an object": _handmade(b"[1,2,3]"),
    }


def test_handmade_file_is_readable(tmp_path: Path) -> None:
    (tmp_path / NAME).write_bytes(_handmade(orjson.dumps({"k": "v"})))
    snapshot = read_snapshot(tmp_path)
    assert snapshot is not None
    assert snapshot.data == {"k": "v"}
    assert snapshot.watermark == 7


@pytest.mark.parametrize(
    "case",
    [
        "empty",
        "short header",
        "truncated body",
        "extra bytes",
        "flipped body",
        "flipped header",
        "foreign magic",
        "newer version",
        "not json",
        "not an object",
    ],
)
def test_damaged_file_reads_as_none_with_a_warning(tmp_path: Path, case: str) -> None:
    write_snapshot(tmp_path, {"agents": {"a": {"name": "n" * 50}}}, watermark=3)
    valid = (tmp_path / NAME).read_bytes()
    (tmp_path / NAME).write_bytes(_corruptions(valid)[case])
    with capture_logs() as logs:
        assert read_snapshot(tmp_path) is None
    assert [entry["log_level"] for entry in logs] == ["warning"]
    assert logs[0]["path"] == str(tmp_path / NAME)
    assert logs[0]["reason"]


def test_failed_write_leaves_the_old_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_snapshot(tmp_path, {"generation": 1}, watermark=1)
    real_write = os.write
    calls = 0

    def fill_disk(fd: int, data: Any) -> int:
        nonlocal calls
        calls += 1
        if calls > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        # Short writes on the way, as a nearly full disk may give.
        return real_write(fd, bytes(data[: max(1, len(data) // 3)]))

    monkeypatch.setattr(os, "write", fill_disk)
    big = {"generation": 2, "padding": "p" * (3 * 1024 * 1024)}
    with pytest.raises(OSError, match="No space left"):
        write_snapshot(tmp_path, big, watermark=2)
    monkeypatch.undo()

    snapshot = read_snapshot(tmp_path)
    assert snapshot is not None
    assert snapshot.data == {"generation": 1}
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_failed_sync_or_rename_leaves_the_old_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    write_snapshot(tmp_path, {"generation": 1}, watermark=1)

    def fail(*_args: Any) -> None:
        raise OSError(errno.EIO, f"injected {step} failure")

    monkeypatch.setattr(os, step, fail)
    with pytest.raises(OSError, match=f"injected {step} failure"):
        write_snapshot(tmp_path, {"generation": 2}, watermark=2)
    monkeypatch.undo()

    snapshot = read_snapshot(tmp_path)
    assert snapshot is not None
    assert snapshot.watermark == 1
    assert _leftovers(tmp_path) == []


def test_stale_temporary_file_does_not_matter(tmp_path: Path) -> None:
    # A crash mid-write leaves the temporary file; the next write reuses and replaces it.
    (tmp_path / f".{NAME}.tmp").write_bytes(b"half a snapshot")
    write_snapshot(tmp_path, {"ok": True}, watermark=5)
    snapshot = read_snapshot(tmp_path)
    assert snapshot is not None
    assert snapshot.data == {"ok": True}
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("agents", [0, 1, 3, 7])
async def test_the_body_encoded_in_steps_is_the_document_encoded_at_once(
    tmp_path: Path, agents: int
) -> None:
    from datetime import UTC, datetime, timedelta

    from proxy.registry.agent import AgentRecord
    from proxy.store.replica import Replica
    from proxy.store.snapshot import encode_in_steps, write_snapshot_body

    now = datetime(2026, 12, 4, 18, 0, 0, 123, tzinfo=UTC)
    records = [
        AgentRecord(
            tenant_id="t",
            agent_id=f"a{n}",
            name=f"agent {n}",
            model_family="fam",
            task_types=("code",),
            languages=("python", "go"),
            specializations=(),
            max_concurrent_tasks=4,
            active_tasks=n % 3,
            queued_tasks=0,
            load_observed_at=None if n % 2 else now,
            registered_at=now - timedelta(days=n),
            last_heartbeat_at=now.replace(microsecond=0),
            updated_at=now,
            version=n + 1,
            deleted_at=None,
            task_count=n,
            success_count=n // 2,
            quality_sum=0.1 * n,
            latency_ms_sum=12.5 * n,
            revision=1,
        )
        for n in range(agents)
    ]
    view = (["t", "u"], bool(agents % 2), records)
    body = await encode_in_steps(view, rows_per_step=3)
    document = {
        "tenants": ["t", "u"],
        "partial": bool(agents % 2),
        "agents": [rec.to_snapshot() for rec in records],
    }
    assert body == orjson.dumps(document)
    write_snapshot_body(tmp_path, body, watermark=agents)
    snap = read_snapshot(tmp_path)
    assert snap is not None and snap.watermark == agents
    replica = Replica()
    replica.load_snapshot(snap.data, watermark=snap.watermark, written_at=snap.written_at)
    assert sorted(replica.records(), key=lambda r: r.agent_id) == sorted(
        records, key=lambda r: r.agent_id
    )
