"""The clock: wall time for rows and deadlines, monotonic time for intervals, and sleeping.

Code that stamps, measures or waits takes a ``Clock``. ``SystemClock`` is the
real one; ``FakeClock`` is its twin for unit tests, real code like the other
stub twins: its time moves only when told (``advance``) or when something
sleeps on it, so a test of a lease or a backoff is exact and takes no time.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The wall time, timezone-aware, in UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, for intervals (its origin means nothing)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Return after ``seconds``."""
        ...


class SystemClock:
    """The machine's clocks."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class FakeClock:
    """A clock whose time stands still until a test moves it; ``sleep`` moves it and returns at once.

    Both readings move together: ``advance(2)`` puts ``now()`` and ``monotonic()`` two seconds on.
    """

    def __init__(self, start: datetime | None = None) -> None:
        if start is not None and start.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start")
        self._now = (start or datetime.now(UTC)).astimezone(UTC)
        self._monotonic = 0.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._monotonic

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        """Move time ``seconds`` on; never back (``time.sleep`` refuses a negative time too)."""
        if seconds < 0:
            raise ValueError("seconds must be non-negative")
        with self._lock:
            self._now += timedelta(seconds=seconds)
            self._monotonic += seconds
