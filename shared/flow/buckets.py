"""Rate buckets: how often the jobs of a bucket start, shared by every worker through one Redis script.

A token bucket holding one token, refilled every ``interval`` (``period / count``
of a ``Rate``), kept as the time the next token is free (the "theoretical
arrival time" of GCRA) under one key per bucket. A job that finds no token
does not retry for it: ``take`` reserves the next free token for it and says
how long to wait, so a burst of N jobs is spread one ``interval`` apart, each
deferred once, none polling. Starts are therefore never closer than
``interval`` on average, and in any window of one period at most ``count + 1``
start on time. Redis's clock (``TIME``) is the one clock, whatever the workers'.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from shared.flow.limits import Rate
from shared.flow.slots import PREFIX

#: The message option of a copy deferred with a token reserved for it (Redis's time in ms it is due at):
#: it starts without taking another. A retry's new message must not carry it (``outcomes.py``).
RATE_TICKET = "jobrelay_rate_ticket"
#: Longest a token is reserved ahead; a job that would wait longer is deferred that long without one.
MAX_RESERVE_S = 3600.0

# KEYS: the bucket's key. ARGV: interval ms, the longest reservation ms.
# Returns {reserved (1/0), wait ms, Redis's now in ms}.
_TAKE = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('get', KEYS[1]) or '0')
local start = math.max(tat, now)
local wait = start - now
if wait > tonumber(ARGV[2]) then return {0, wait, now} end
redis.call('set', KEYS[1], start + interval, 'PX', wait + interval + 1000)
return {1, wait, now}
"""


@dataclass(frozen=True)
class Token:
    """A start allowed at ``now_ms + wait_ms`` (``reserved``), or no token within reach (defer ``wait_ms``)."""

    reserved: bool
    wait_ms: int
    now_ms: int

    @property
    def now(self) -> bool:
        return self.reserved and self.wait_ms <= 0

    @property
    def at_ms(self) -> int:
        return self.now_ms + self.wait_ms


def rate_key(bucket: str) -> str:
    return f"{PREFIX}rate:{bucket}"


class RateBuckets:
    def __init__(self, client: redis.Redis, *, max_reserve_s: float = MAX_RESERVE_S) -> None:
        self.client = client
        self.max_reserve_ms = int(max_reserve_s * 1000)
        self._take = client.register_script(_TAKE)

    def take(self, bucket: str, rate: Rate) -> Token:
        """The next token of ``bucket``: now, reserved for later, or out of reach."""
        interval_ms = max(1, round(rate.interval_s * 1000))
        reserved, wait_ms, now_ms = self._take(keys=[rate_key(bucket)], args=[interval_ms, self.max_reserve_ms])
        return Token(bool(reserved), int(wait_ms), int(now_ms))
