"""From a schedule's timing (5-field cron in a time zone, or an interval) to an APScheduler trigger.

Cron is read as crontab(5) reads it, not as APScheduler 3 does: APScheduler
numbers the days of the week from Monday = 0, crontab from Sunday = 0 (and
7), so the day-of-week field is rewritten into day names before
``CronTrigger`` sees it. Like APScheduler (and Celery), a
restricted day of month and day of week must both match. Daylight saving
time is handled as ``CronTrigger`` handles it: a wall-clock time that does not
exist on the spring-forward day fires one hour later in wall-clock terms (the
same UTC instant the hour before would have had), one that occurs twice on
the fall-back day fires twice.

Intervals count whole seconds from the Unix epoch (so every 3600 s fires on
the hour, UTC): every replica and every restart computes the same ticks with
no stored anchor.
"""

from __future__ import annotations

import re
import zoneinfo
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Longest interval accepted: a leap year.
MAX_INTERVAL_S = 366 * 86400
#: How far ahead a cron expression's next tick is looked for before it counts as one that never
#: fires (``0 0 30 2 *``). A 5-field expression that fires at all does so within 40 years: 29
#: February on one weekday recurs every 28 years, or 40 across a century year that is no leap
#: year. Bounded, as APScheduler's own search walks on to the year 9999 (up to 2 s of CPU).
CRON_HORIZON = timedelta(days=50 * 365)

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DOW_ITEM = re.compile(r"^(\*|[a-z0-9]+)(?:-([a-z0-9]+))?(?:/(\d+))?$")


class TimingError(ValueError):
    """A cron expression, interval or time zone that cannot be used; the message says why."""


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) | {"UTC"}


def zone(name: str) -> zoneinfo.ZoneInfo:
    """An IANA time zone by its name (``Europe/Berlin``); no abbreviations, offsets or file paths."""
    if name not in _zones():
        raise TimingError(f"{name!r} is not an IANA time zone name (such as 'UTC' or 'Europe/Berlin')")
    return zoneinfo.ZoneInfo(name)


def _day(token: str) -> int:
    if token.isdigit() and 0 <= int(token) <= 7:
        return int(token) % 7
    if token[:3] in _DAY_NAMES and len(token) == 3:
        return _DAY_NAMES.index(token)
    raise TimingError(f"day of week {token!r} must be 0-7 (0 and 7 are Sunday) or sun-sat")


def _day_of_week(field: str) -> str:
    """crontab's day-of-week field as APScheduler day names (``1-5`` becomes ``mon,tue,wed,thu,fri``)."""
    if field == "*":
        return field
    days: set[int] = set()
    for item in field.lower().split(","):
        match = _DOW_ITEM.match(item)
        if not match:
            raise TimingError(f"day of week {item!r} is not a value, range or step")
        first, last, step = match.groups()
        if first == "*":
            if last is not None:
                raise TimingError(f"day of week {item!r}: '*' takes no range")
            lo, hi = 0, 6
        else:
            lo = _day(first)
            hi = lo if last is None else (7 if last == "7" else _day(last))
            if step is not None and last is None:
                hi = 6
            if hi < lo:
                raise TimingError(f"day of week {item!r}: a range must go from the lower to the higher day")
        stride = int(step) if step is not None else 1
        if stride < 1:
            raise TimingError(f"day of week {item!r}: the step must be at least 1")
        days.update(day % 7 for day in range(lo, hi + 1, stride))
    return ",".join(_DAY_NAMES[day] for day in sorted(days))


def cron_trigger(expression: str, timezone: str, *, end_date: datetime | None = None) -> CronTrigger:
    """A ``CronTrigger`` for a 5-field crontab expression (or @daily and friends) read in ``timezone``.

    With ``end_date`` it has no tick after that moment, which bounds the search for the next one.
    """
    tz = zone(timezone)
    text = _MACROS.get(expression.strip().lower(), expression.strip())
    parts = text.split()
    if len(parts) != 5:
        raise TimingError(f"a cron expression has 5 fields (minute hour day month weekday), not {len(parts)}")
    minute, hour, day, month, weekday = parts
    day_of_week = _day_of_week(weekday)
    try:
        # NOTE: CronTrigger.from_crontab's own fields, with an end date it cannot take.
        return CronTrigger(
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=day_of_week,
            timezone=tz,
            end_date=end_date,
        )
    except ValueError as exc:
        raise TimingError(f"invalid cron expression: {exc}") from None


def never_fires(expression: str, timezone: str, now: datetime) -> bool:
    """Whether a valid cron expression has no tick within ``CRON_HORIZON`` of ``now``: none at all."""
    trigger = cron_trigger(expression, timezone, end_date=now + CRON_HORIZON)
    return first_tick_at_or_after(trigger, now) is None


def interval_trigger(interval_s: int, timezone: str = "UTC") -> IntervalTrigger:
    if isinstance(interval_s, bool) or not isinstance(interval_s, int) or not 1 <= interval_s <= MAX_INTERVAL_S:
        raise TimingError(f"an interval is a whole number of seconds from 1 to {MAX_INTERVAL_S}")
    # NOTE: anchored at the epoch, ticks are exact multiples of the interval: no float drift, same on every replica.
    return IntervalTrigger(seconds=interval_s, start_date=EPOCH, timezone=zone(timezone))


def build_trigger(cron: str | None, interval_s: int | None, timezone: str) -> BaseTrigger:
    """The trigger for a schedule's timing; exactly one of ``cron`` and ``interval_s``."""
    if (cron is None) == (interval_s is None):
        raise TimingError("give exactly one of cron and interval_s")
    if cron is not None:
        return cron_trigger(cron, timezone)
    assert interval_s is not None
    return interval_trigger(interval_s, timezone)


def first_tick_at_or_after(trigger: BaseTrigger, moment: datetime) -> datetime | None:
    """The first tick at ``moment`` or later, in UTC (None when the trigger never fires again)."""
    found = trigger.get_next_fire_time(None, moment.astimezone(UTC))
    return found.astimezone(UTC) if found is not None else None


def first_tick_after(trigger: BaseTrigger, moment: datetime) -> datetime | None:
    """The first tick strictly after ``moment``, in UTC."""
    return first_tick_at_or_after(trigger, moment + timedelta(microseconds=1))
