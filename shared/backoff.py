"""How long a failed attempt waits before the next: exponential backoff with full jitter.

The worker's retry policy (``services/worker/retry_policy.py``) and the recovery of attempts lost
with their worker (``shared/broker/orphans.py``, run by the supervisor and the scheduler) share it.
"""

from __future__ import annotations

import random


def backoff_s(attempt: int, *, min_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Full jitter: uniform in [0, min(max_s, min_s * 2**(attempt-1))] (AWS architecture blog)."""
    # The exponent is capped so a late attempt cannot overflow a float before the cap applies.
    ceiling = min(max_s, min_s * 2.0 ** min(max(0, attempt - 1), 64))
    return (rng or random).uniform(0, ceiling)
