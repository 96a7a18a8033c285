"""When and how soon a failed attempt runs again: exponential backoff with full jitter (``shared/backoff.py``)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from shared.backoff import backoff_s
from shared.catalog import TaskDefinition
from shared.errors import PermanentTaskFailure


class Retry(Exception):
    """Raise inside a task to run it again after ``after_s`` seconds (counts as an attempt)."""

    def __init__(self, after_s: float | None = None, message: str = "retry requested") -> None:
        super().__init__(message)
        self.after_s = after_s


@dataclass(frozen=True)
class Decision:
    retry: bool
    delay_s: float = 0.0
    retryable: bool = True


def decide(
    definition: TaskDefinition | None,
    exc: BaseException,
    *,
    attempts: int,
    max_retries: int,
    rng: random.Random | None = None,
) -> Decision:
    """Retry, and after how long, for an attempt (``attempts`` counts starts so far) that raised ``exc``."""
    non_retryable = definition.non_retryable_types if definition else ()
    if isinstance(exc, PermanentTaskFailure) or (non_retryable and isinstance(exc, non_retryable)):
        return Decision(retry=False, retryable=False)
    if attempts > max_retries:
        return Decision(retry=False)
    if isinstance(exc, Retry) and exc.after_s is not None:
        return Decision(retry=True, delay_s=max(0.0, exc.after_s))
    spec = definition.spec if definition else None
    delay = backoff_s(
        attempts,
        min_s=spec.min_backoff_s if spec else 1.0,
        max_s=spec.max_backoff_s if spec else 3600.0,
        rng=rng,
    )
    return Decision(retry=True, delay_s=delay)
