"""Names the dead-code check (`make test`, vulture over proxy/ and chaos/) must not report: each
is used, by something vulture cannot see. Add a name here only with the reason beside it."""

# ruff: noqa
_ = object()

# Called by asyncio on a protocol, not by our code.
_.eof_received
_.pause_writing
_.resume_writing

# Read by pydantic (model configuration), and the fields of the answer models, which are
# written into responses by serialisation, never read by name.
_.model_config
_.capabilities
_.quality_score
_.latency_ms
_.average_quality
_.average_latency_ms
_.agent
_.match_score
_.match_reasons
_.total_agents
_.active_agents
_.idle_agents
_.average_utilization
_.average_success_rate
_.instance

# aiohttp's StreamResponse interface, which the front door's direct answer implements; and the
# attributes aiohttp and the logging module read.
_.prepare
_.write_eof
_.charset
# StreamResponse's own field, which its `headers` property reads: the direct answer sets it
# without calling StreamResponse.__init__.
_._headers
_.exc_text
_.__class__
_.__cause__

# State the resilience primitives expose for inspection: /v1/status shows some, the tests of
# their rules read all of them.
_.consecutive_failures
_.consecutive_trips
_.open_period
_.window_counts
_.in_use
_.behind_since

# Read by the tests that prove eviction and the chaos server's /metrics.
_.evicted
_.connection_count

# Waited on by everything that starts a sidecar in-process: tests, the bench.
_.wait_ready
# The journal file's size, read by recovery and shown in status.
_.size_bytes
# One agent's reasons for one query, as `rank` lists them: the tests pin the wording through it.
_.reasons

# aiohttp's request handler state that `_ProblemRequestHandler` keeps as aiohttp's request loop
# does, for a request it answers in its read callback (aiohttp reads them).
_.requests_count
_._keepalive
_._next_keepalive_close_time
