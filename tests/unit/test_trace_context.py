"""The request's span context where tracing needs it beyond the request: in the journal entry
(written, compacted, read back after a restart; entries written before the field existed still
read), and in the log lines beside the request id."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import structlog

from proxy.observability.logging import REQUEST_ID, configure
from proxy.store.journal import JOURNAL_FILE, Journal, codec

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
_OLD_ENTRY = {
    "seq": 1,
    "op_id": "t/op-1",
    "kind": "heartbeat",
    "tenant": "t",
    "key": "a-1",
    "payload": {"payload": {}},
    "created_at": 1.5,
}


def test_an_entry_without_a_trace_is_written_and_read_as_before() -> None:
    entry = codec.entry_from_obj(_OLD_ENTRY)
    assert entry.trace is None
    assert codec.entry_to_obj(entry) == _OLD_ENTRY  # no new key in an untraced record


def test_an_entry_keeps_its_trace_and_a_malformed_one_is_dropped() -> None:
    entry = codec.entry_from_obj({**_OLD_ENTRY, "trace": TRACEPARENT})
    assert entry.trace == TRACEPARENT
    assert codec.entry_to_obj(entry) == {**_OLD_ENTRY, "trace": TRACEPARENT}
    # A link between traces is not worth calling an acknowledged write damaged.
    assert codec.entry_from_obj({**_OLD_ENTRY, "trace": 7}).trace is None


async def test_the_trace_survives_a_restart_and_a_compaction(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path)
    traced = await journal.append(
        op_id="t/op-1", kind="heartbeat", tenant="t", key="a-1", payload={}, trace=TRACEPARENT
    )
    plain = await journal.append(
        op_id="t/op-2", kind="heartbeat", tenant="t", key="a-2", payload={}
    )
    assert (traced.trace, plain.trace) == (TRACEPARENT, None)
    raw = (tmp_path / JOURNAL_FILE).read_bytes()
    assert raw.count(b'"trace"') == 1
    await journal.close()

    journal = await Journal.open(tmp_path)
    assert {e.op_id: e.trace for e in journal.pending()} == {"t/op-1": TRACEPARENT, "t/op-2": None}
    await journal.compact()
    await journal.close()
    journal = await Journal.open(tmp_path)
    assert {e.op_id: e.trace for e in journal.pending()} == {"t/op-1": TRACEPARENT, "t/op-2": None}
    await journal.close()


def test_log_lines_of_a_request_carry_its_trace_id_beside_its_request_id() -> None:
    stream = io.StringIO()
    configure(level="info", fmt="json", stream=stream)
    log = structlog.get_logger("test")
    try:
        untraced = REQUEST_ID.set("req-1")
        log.info("untraced")
        REQUEST_ID.reset(untraced)
        traced = REQUEST_ID.set("req-2", 0x4BF92F3577B34DA6A3CE929D0E0E4736)
        log.info("traced")
        REQUEST_ID.reset(traced)
        log.info("outside")
    finally:
        configure(level="warning", fmt="json")
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    by_event = {line["event"]: line for line in lines}
    assert by_event["untraced"]["request_id"] == "req-1"
    assert "trace_id" not in by_event["untraced"]
    assert by_event["traced"]["request_id"] == "req-2"
    assert by_event["traced"]["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert "request_id" not in by_event["outside"] and "trace_id" not in by_event["outside"]
