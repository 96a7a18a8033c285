"""The Redis mirror of paused queues, which workers read at no cost (inside their fetch script).

The store holds the truth (``shared/store/pauses.py``). The API writes the mirror
with each pause and resume; the scheduler puts it right every few seconds
(``sync_pauses``), so a Redis that lost its data, or an API that died between its
commit and its Redis write, leaves a queue wrongly running or paused for seconds only.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis

from shared.broker.bands import PAUSED_PREFIX, paused_key, resume_key
from shared.broker.waking import WAKE_TOKENS, wake_key

#: How long a resume's tokens wait for consumers blocked on the paused queue (each takes one).
RESUME_TOKENS_TTL_S = 10


def mirror_pause(client: redis.Redis, queue: str) -> None:
    pipe = client.pipeline(transaction=True)
    pipe.set(paused_key(queue), 1)
    # Leftover tokens of an earlier resume would let a paused consumer spin once per token.
    pipe.delete(resume_key(queue))
    pipe.execute()


def mirror_resume(client: redis.Redis, queue: str) -> None:
    """Unpause, and wake every consumer waiting on the queue at once (paused ones and idle ones)."""
    pipe = client.pipeline(transaction=True)
    pipe.delete(paused_key(queue))
    pipe.delete(resume_key(queue))
    pipe.lpush(resume_key(queue), *([1] * WAKE_TOKENS))
    pipe.expire(resume_key(queue), RESUME_TOKENS_TTL_S)
    pipe.lpush(wake_key(queue), 1)
    pipe.ltrim(wake_key(queue), 0, WAKE_TOKENS - 1)
    pipe.execute()


def mirrored_pauses(client: redis.Redis) -> set[str]:
    keys: Iterable[bytes] = client.scan_iter(match=PAUSED_PREFIX + "*", count=500)
    return {key.decode()[len(PAUSED_PREFIX) :] for key in keys}


def sync_pauses(client: redis.Redis, paused: set[str]) -> tuple[set[str], set[str]]:
    """Make the mirror hold exactly ``paused`` (the store's); returns (queues paused, queues resumed) by it."""
    mirrored = mirrored_pauses(client)
    for queue in sorted(paused - mirrored):
        mirror_pause(client, queue)
    for queue in sorted(mirrored - paused):
        mirror_resume(client, queue)
    return paused - mirrored, mirrored - paused
