"""Calls a worker keeps making until the job store or Redis answers again."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from shared.broker.waking import REDIS_DOWN
from shared.store.engine import STORE_DOWN

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Longest pause between attempts to reach the job store or Redis while it is down.
MAX_OUTAGE_RETRY_S = 5.0


def until_up(call: Callable[[], T], errors: tuple[type[Exception], ...], what: str) -> T:
    """Run ``call`` until ``what`` answers: the worker pauses while it is down."""
    delay_s = 0.05
    while True:
        try:
            return call()
        except errors as exc:
            log.warning("%s unavailable (%s); retrying in %.2fs", what, type(exc).__name__, delay_s)
            time.sleep(delay_s)
            delay_s = min(MAX_OUTAGE_RETRY_S, delay_s * 2)


def persist(write: Callable[[], T]) -> T:
    """A store call that outlasts a store outage.

    NOTE: Dramatiq swallows errors raised in middleware hooks and acks the
    message anyway, so giving up here would lose the job's outcome.
    """
    return until_up(write, STORE_DOWN, "job store")


def deliver(send: Callable[[], T]) -> T:
    """A broker call that outlasts a Redis outage.

    NOTE: a retry's row already says ``retrying`` when its message is sent, and the
    current message is acked after the hook; giving up here would leave the job
    with no message to run it, for good.
    """
    return until_up(send, REDIS_DOWN, "Redis")
