"""Cron and interval timing: crontab's weekday numbers, time zones and daylight saving time."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from services.scheduler.ticks import ticks_between
from shared.schedules.triggers import (
    TimingError,
    build_trigger,
    cron_trigger,
    first_tick_after,
    first_tick_at_or_after,
    interval_trigger,
    never_fires,
    zone,
)


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def test_weekday_numbers_are_read_as_crontab_reads_them() -> None:
    # 2024-06-01 is a Saturday.
    saturday = at(2024, 6, 1)
    assert first_tick_at_or_after(cron_trigger("0 9 * * 0", "UTC"), saturday) == at(2024, 6, 2, 9)  # Sunday
    assert first_tick_at_or_after(cron_trigger("0 9 * * 7", "UTC"), saturday) == at(2024, 6, 2, 9)  # Sunday too
    assert first_tick_at_or_after(cron_trigger("0 9 * * 1", "UTC"), saturday) == at(2024, 6, 3, 9)  # Monday
    weekdays = ticks_between(cron_trigger("0 9 * * 1-5", "UTC"), saturday, at(2024, 6, 9))
    assert [tick.day for tick in weekdays] == [3, 4, 5, 6, 7]
    every_other = ticks_between(cron_trigger("0 0 * * */2", "UTC"), saturday, at(2024, 6, 9))
    assert [tick.strftime("%a") for tick in every_other] == ["Sat", "Sun", "Tue", "Thu", "Sat"]
    weekend = ticks_between(cron_trigger("0 0 * * 6-7", "UTC"), at(2024, 6, 3), at(2024, 6, 10))
    assert [tick.strftime("%a") for tick in weekend] == ["Sat", "Sun"]


def test_macros_and_names() -> None:
    assert first_tick_at_or_after(cron_trigger("@daily", "UTC"), at(2024, 6, 1, 0, 0, 1)) == at(2024, 6, 2)
    assert first_tick_at_or_after(cron_trigger("@hourly", "UTC"), at(2024, 6, 1, 0, 0, 1)) == at(2024, 6, 1, 1)
    assert first_tick_at_or_after(cron_trigger("30 8 * * mon-fri", "UTC"), at(2024, 6, 1)) == at(2024, 6, 3, 8, 30)


def test_cron_in_a_time_zone() -> None:
    # 02:00 in New York in June is 06:00 UTC (EDT, UTC-4).
    trigger = cron_trigger("0 2 * * *", "America/New_York")
    assert first_tick_at_or_after(trigger, at(2024, 6, 1)) == at(2024, 6, 1, 6)


def test_spring_forward_fires_the_missing_wall_clock_time_an_hour_later() -> None:
    # Europe/Berlin, 2024-03-31: clocks jump from 02:00 to 03:00 (01:00 UTC), so 02:30 does not exist.
    trigger = cron_trigger("30 2 * * *", "Europe/Berlin")
    ticks = ticks_between(trigger, at(2024, 3, 30), at(2024, 4, 2))
    # 02:30 CET the day before (01:30 UTC); on the day CronTrigger fires at 01:30 UTC (03:30 CEST);
    # the day after 02:30 CEST (00:30 UTC).
    assert ticks == [at(2024, 3, 30, 1, 30), at(2024, 3, 31, 1, 30), at(2024, 4, 1, 0, 30)]


def test_fall_back_fires_a_repeated_wall_clock_time_twice() -> None:
    # Europe/Berlin, 2024-10-27: 02:00-03:00 happens twice (CEST, then CET).
    trigger = cron_trigger("30 2 * * *", "Europe/Berlin")
    ticks = ticks_between(trigger, at(2024, 10, 26, 12), at(2024, 10, 28, 12))
    assert ticks == [at(2024, 10, 27, 0, 30), at(2024, 10, 27, 1, 30), at(2024, 10, 28, 1, 30)]


def test_intervals_count_from_the_epoch() -> None:
    trigger = interval_trigger(3600, "Europe/Berlin")
    assert first_tick_at_or_after(trigger, at(2024, 6, 1, 10, 0, 1)) == at(2024, 6, 1, 11)
    assert first_tick_at_or_after(trigger, at(2024, 6, 1, 10)) == at(2024, 6, 1, 10)
    assert first_tick_after(trigger, at(2024, 6, 1, 10)) == at(2024, 6, 1, 11)
    seven = interval_trigger(7)
    tick = first_tick_at_or_after(seven, at(2024, 6, 1))
    assert tick is not None and int(tick.timestamp()) % 7 == 0


@pytest.mark.parametrize(
    ("cron", "interval_s", "timezone", "message"),
    [
        ("0 2 * *", None, "UTC", "5 fields"),
        ("0 2 * * * *", None, "UTC", "5 fields"),
        ("61 2 * * *", None, "UTC", "invalid cron expression"),
        ("0 25 * * *", None, "UTC", "invalid cron expression"),
        ("0 2 * * 8", None, "UTC", "day of week"),
        ("0 2 * * fri-mon", None, "UTC", "lower to the higher"),
        ("0 2 * * ", None, "UTC", "5 fields"),
        ("0 2 * * *", None, "Mars/Olympus", "IANA"),
        ("0 2 * * *", None, "CEST", "IANA"),
        ("0 2 * * *", None, "../../etc/passwd", "IANA"),
        (None, 0, "UTC", "whole number"),
        (None, None, "UTC", "exactly one"),
        ("0 2 * * *", 60, "UTC", "exactly one"),
    ],
)
def test_bad_timing_is_refused(cron: str | None, interval_s: int | None, timezone: str, message: str) -> None:
    with pytest.raises(TimingError, match=message):
        build_trigger(cron, interval_s, timezone)


def test_zone_accepts_iana_names_only() -> None:
    assert str(zone("Europe/Berlin")) == "Europe/Berlin"
    assert str(zone("UTC")) == "UTC"
    with pytest.raises(TimingError):
        zone("+02:00")


@pytest.mark.parametrize(
    ("cron", "never"),
    [
        ("0 0 30 2 *", True),
        ("0 0 31 4,6,9,11 *", True),
        ("0 0 31 2,4,6,9,11 *", True),
        ("0 0 29 2 *", False),  # leap years
        ("0 0 29 2 1", False),  # 29 February on a Monday: 2044, 2072 ...
        ("0 0 31 1-12/2 *", False),
        ("@yearly", False),
    ],
)
def test_a_cron_that_never_fires_is_found_quickly(cron: str, never: bool) -> None:
    # Given the turn of a century year that is no leap year, the longest wait for 29 February
    started = time.monotonic()
    assert never_fires(cron, "Europe/Berlin", at(2096, 3, 1)) is never
    # NOTE: APScheduler's unbounded search would walk to the year 9999 (up to 2 s) to say so.
    assert time.monotonic() - started < 0.5
