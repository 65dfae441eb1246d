"""Opening a journal: reading it back, deciding what the damage found means, and repairing the
file before anyone uses it; and `journal check`, which reports what opening would find.

Bytes after the last valid commit record are a torn tail (scan.py tells them from damage): they
are cut off and counted. Damage stops `open` with a JournalDamaged naming the file, the offset and
what to do, unless `on_damage="quarantine"`: then the damaged bytes go to a side file, an error
is logged, `stats()["damage"]` lists them, and the journal is rewritten without them. A version 1
journal is rewritten in version 2 (should that fail, version 2 batches after version 1 records
read just as well), and so is a journal that ran over `compact_bytes` before it was closed. A
`.compact` file left by a rewrite that crashed before its rename is deleted: the old file is
complete.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson
import structlog

from proxy.store.journal.codec import FORMAT_VERSION, TYPE_META, encode, meta_body
from proxy.store.journal.compaction import Compactor
from proxy.store.journal.errors import JournalDamaged, JournalError
from proxy.store.journal.files import (
    DAMAGED_PREFIX,
    JOURNAL_FILE,
    SEAL_FILE,
    LogFile,
    Seal,
    fsync_dir,
    read_seal,
    side_files,
    write_new_file,
)
from proxy.store.journal.index import Index
from proxy.store.journal.scan import Scan, UnsupportedRecord, scan
from proxy.store.journal.space import DiskSpace, is_space_error

_log = structlog.get_logger(__name__)


class OnDamage(StrEnum):
    REFUSE = "refuse"
    QUARANTINE = "quarantine"


def _damage_message(path: Path, found: Scan, sealed: int | None) -> str:
    shown = [
        f"at offset {region.offset} ({region.reason}"
        + (f", {region.length} bytes)" if region.length else ")")
        for region in found.damage[:3]
    ]
    more = len(found.damage) - len(shown)
    others = f", and {more} more damaged regions" if more else ""
    if found.next_commit is not None:
        proof = (
            f"the valid commit record at offset {found.next_commit} after it shows that the "
            "damaged records had been acknowledged"
        )
    else:
        proof = (
            f"the journal was closed cleanly at {sealed} bytes ({SEAL_FILE}), so every record "
            "in it had been acknowledged"
        )
    return (
        f"journal {path} is damaged {', '.join(shown)}{others}: {proof}. "
        "Refusing to start rather than drop writes that were answered 202. Keep a copy of "
        f"{path.parent}; then restore {path.name} from a good copy, or set the damaged bytes "
        "aside and start with the rest: run `registry-proxy journal recover`, or start once with "
        "REGISTRY_PROXY_JOURNAL__ON_DAMAGE=quarantine (the writes in the damaged bytes are then "
        "not applied)."
    )


def inspect_journal(directory: Path) -> dict[str, Any]:
    """What `open` would find in `directory`, without changing or locking anything."""
    directory = Path(directory)
    path = directory / JOURNAL_FILE
    try:
        sealed = read_seal(directory / SEAL_FILE)
        buf = path.read_bytes()
    except FileNotFoundError:
        return {"path": str(path), "exists": False, "damage": [], "side_files": []}
    except OSError as exc:
        raise JournalError(f"cannot read journal {path}: {exc}") from exc
    try:
        found = scan(buf, sealed_size=sealed)
    except UnsupportedRecord as exc:
        raise JournalError(f"journal {path} has a {exc}") from exc
    return {
        "path": str(path),
        "exists": True,
        "size_bytes": len(buf),
        "closed_cleanly": sealed is not None,
        "format": 1 if found.legacy else FORMAT_VERSION,
        "acknowledged_records": len(found.records),
        "torn_tail_bytes": len(buf) - found.end if sealed is None else 0,
        "damage": [region.to_obj() for region in found.damage],
        "message": _damage_message(path, found, sealed) if found.damage else None,
        "side_files": side_files(directory),
    }


@dataclass(slots=True)
class Recovered:
    """What opening found and did, for the journal's stats."""

    torn_records_dropped: int = 0
    torn_bytes_dropped: int = 0
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    side_files: list[dict[str, Any]] = field(default_factory=list)


def recover(
    *,
    directory: Path,
    file: LogFile,
    seal: Seal,
    index: Index,
    space: DiskSpace,
    compactor: Compactor,
    on_damage: OnDamage,
) -> Recovered:
    """Read the journal in `directory` into `index` and leave `file` ready for appends. Runs in
    the I/O thread before the journal is visible to anyone; raises JournalError (JournalDamaged
    for damage that `on_damage` says to refuse)."""
    opening = _Opening(directory, file, seal, index, space, compactor, on_damage)
    opening.run()
    return opening.result


class _Opening:
    def __init__(
        self,
        directory: Path,
        file: LogFile,
        seal: Seal,
        index: Index,
        space: DiskSpace,
        compactor: Compactor,
        on_damage: OnDamage,
    ) -> None:
        self._dir = directory
        self._file = file
        self._path = file.path
        self._fsync = file.fsync
        self._seal = seal
        self._index = index
        self._space = space
        self._compactor = compactor
        self._on_damage = on_damage
        self.result = Recovered()

    def run(self) -> None:
        try:
            with contextlib.suppress(FileNotFoundError):
                # Left by a compaction that crashed before its rename: the old file is complete.
                self._file.compact_path.unlink()
            sealed = self._seal.read()
            buf = self._file.open()
            self.result.side_files = side_files(self._dir)
        except OSError as exc:
            raise JournalError(f"cannot read journal {self._path}: {exc}") from exc
        try:
            found = scan(buf, sealed_size=sealed)
        except UnsupportedRecord as exc:
            raise JournalError(f"journal {self._path} has a {exc}") from exc
        if found.damage and self._on_damage is OnDamage.REFUSE:
            raise JournalDamaged(_damage_message(self._path, found, sealed), found.damage)
        for record in found.records:
            try:
                self._index.load(record.rtype, orjson.loads(record.body))
            except (orjson.JSONDecodeError, ValueError) as exc:
                raise JournalError(
                    f"journal {self._path} has an unreadable record at offset {record.offset}: "
                    f"{exc}"
                ) from exc
        self._compactor.sheddable = len(self._index.finished)

        try:
            self._space.open_reserve()
            if found.damage:
                self._quarantine(buf, found)
            # From here on the journal changes: an old clean-close size must not outlive that.
            self._seal.mark_in_use()
            self._file.size = found.end
            self._index.durable_next_seq = self._index.next_seq
            torn = len(buf) - found.end if sealed is None else 0
            if torn > 0:
                self.result.torn_records_dropped += found.tail_records
                self.result.torn_bytes_dropped += torn
                _log.warning(
                    "journal_torn_tail_dropped",
                    path=str(self._path),
                    offset=found.end,
                    bytes=torn,
                    records=found.tail_records,
                )
            if torn > 0 and not found.damage:
                self._file.cut(found.end)
            if found.damage or found.legacy:
                # Without the damaged bytes, or in the current format: rewrite the live state.
                self._rewrite_on_open(required=bool(found.damage))
            elif self._file.size == 0:
                self._write_first_meta()
        except OSError as exc:
            raise JournalError(f"cannot repair journal {self._path}: {exc}") from exc

        self._compactor.compact_at = self._compactor.compact_bytes
        if self._file.size > self._compactor.compact_bytes:
            # Ran over the threshold before the last shutdown (or the threshold was lowered).
            self._rewrite_on_open(required=False)
        self._space.restore(self._index.reserved, self._index.depth)
        self._space.sample_free(force=True)

    def _write_first_meta(self) -> None:
        try:
            self._file.size = self._file.append(
                [encode(TYPE_META, meta_body(self._index.durable_next_seq))], 0
            )
        except OSError as exc:
            if not is_space_error(exc):
                raise
            # A new journal on a full disk: it holds nothing yet, so start, but refuse entries.
            self._space.note_error(exc)
            self._space.set_full(True, self._index.depth)
            return
        if self._fsync:
            fsync_dir(self._dir)

    def _rewrite_on_open(self, *, required: bool) -> None:
        entries, outcomes = self._index.live_state(shed=False)
        try:
            new_fd, new_size, kept = self._compactor.write_making_room(entries, outcomes)
        except OSError as exc:
            if required:
                raise JournalError(
                    f"journal {self._path}: the damaged bytes were set aside but the journal "
                    f"could not be rewritten without them: {exc}"
                ) from exc
            self._compactor.failed(exc)
            return
        self._compactor.install(new_fd, new_size, kept_outcomes=kept)
        if self._fsync:
            try:
                fsync_dir(self._dir)
            except OSError as exc:
                raise JournalError(f"cannot make compacted journal durable: {exc}") from exc

    def _quarantine(self, buf: bytes, found: Scan) -> None:
        """Copy the damaged bytes to a side file (with a description) before they are dropped."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = DAMAGED_PREFIX + stamp
        suffix = 1
        while (self._dir / name).exists() or (self._dir / (name + ".json")).exists():
            suffix += 1
            name = f"{DAMAGED_PREFIX}{stamp}-{suffix}"
        regions = [region.to_obj() for region in found.damage]
        data = b"".join(buf[r.offset : r.offset + r.length] for r in found.damage)
        description = orjson.dumps(
            {
                "journal": str(self._path),
                "journal_size": len(buf),
                "quarantined_at": time.time(),
                "regions": regions,
                "note": "each region's bytes follow one another in the side file, in this order",
            },
            option=orjson.OPT_INDENT_2,
        )
        for attempt in (1, 2):
            try:
                write_new_file(self._dir / name, data, fsync=self._fsync)
                write_new_file(self._dir / (name + ".json"), description, fsync=self._fsync)
                break
            except OSError as exc:
                with contextlib.suppress(OSError):
                    (self._dir / name).unlink()
                if attempt == 2 or not is_space_error(exc):
                    raise JournalError(
                        f"journal {self._path} is damaged and the damaged bytes could not be "
                        f"set aside in {self._dir}: {exc}"
                    ) from exc
                self._space.lend_all()
        if self._fsync:
            fsync_dir(self._dir)
        missing = sum(region.missing for region in found.damage)
        self.result.quarantined.append(
            {"file": name, "bytes": len(data), "missing_bytes": missing, "regions": regions}
        )
        self.result.side_files.append({"file": name, "bytes": len(data)})
        _log.error(
            "journal_damage_quarantined",
            path=str(self._path),
            side_file=str(self._dir / name),
            bytes=len(data),
            missing_bytes=missing,
            regions=regions,
            consequence="writes whose records were in the damaged bytes will not be applied",
        )
