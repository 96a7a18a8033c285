"""The clock and its twin: aware UTC wall time, monotonic time, sleeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from shared.clock import Clock, FakeClock, SystemClock


@pytest.mark.parametrize("clock", [SystemClock(), FakeClock()], ids=["system", "fake"])
def test_now_is_aware_utc_and_monotonic_time_never_goes_back(clock: Clock) -> None:
    first = clock.monotonic()
    clock.sleep(0.001)
    assert clock.now().tzinfo is UTC and clock.monotonic() >= first + 0.001


def test_fake_time_moves_only_when_told() -> None:
    # Given a fake clock started at a known moment, in another zone
    start = datetime(2030, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    clock = FakeClock(start)
    # Then it stands still, reads in UTC, and moves both readings together when told or slept on
    assert clock.now() == start and clock.now().tzinfo is UTC and clock.monotonic() == 0.0
    clock.advance(1.5)
    clock.sleep(30)
    assert clock.now() == start + timedelta(seconds=31.5) and clock.monotonic() == 31.5


def test_fake_clock_refuses_a_naive_start_and_going_back() -> None:
    with pytest.raises(ValueError):
        FakeClock(datetime(2030, 1, 1))
    with pytest.raises(ValueError):
        FakeClock().advance(-1)
