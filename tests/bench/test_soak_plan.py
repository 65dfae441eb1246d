"""The soak's plan: how long it warms up before it judges memory."""

from __future__ import annotations

from bench.soak import EVENT_MEMORY_S, default_warmup


def test_a_soak_warms_up_until_the_event_id_memory_is_full_when_time_is_left() -> None:
    # A 20-minute soak judges the last 4 minutes, after the designed growth has ended.
    assert default_warmup(20 * 60) == EVENT_MEMORY_S + 60
    # Too short to wait for it: a fifth of the run, at least 75 s.
    assert default_warmup(10 * 60) == 120
    assert default_warmup(2 * 60) == 75
    # Long runs keep their fifth.
    assert default_warmup(120 * 60) == 24 * 60
