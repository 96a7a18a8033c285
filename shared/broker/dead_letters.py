"""Dead letters in Redis, keyed by job id: written and removed a job at a time, never by reading them all.

A queue's dead letters are the sorted set ``dramatiq:<q>.dead`` (member: the job id, score:
when it was dead-lettered, in ms) and the hash ``dramatiq:<q>.dead.msgs`` (job id -> the
message's body). The store is where operators read dead letters (``shared/store/dead_letters.py``);
Redis keeps the bodies so that nothing a worker gave up on is lost, and drops them when the job
is requeued, purged or pruned: ``ZREM`` and ``HDEL`` of the ids, O(log n) each.

Dramatiq keeps them in ``dramatiq:<q>.XQ`` and ``.XQ.msgs`` keyed by the Redis message id,
which is random, so removing a job's dead letter meant decoding every body in the hash
(1.4 s at 100,000, with Redis answering nobody else meanwhile). Nothing here writes that
layout any more; what an older version left there is moved over in bounded steps by
``move_old_dead_letters`` (the scheduler's ``maintenance.reconcile``), and a purge removes both.

Every key a script touches comes from the functions here and is passed in ``KEYS``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis

#: Ids removed per ``ZREM``/``HDEL`` (about a millisecond of Redis' time at a million dead letters):
#: a command's work stays bounded whatever the caller passes.
DROP_CHUNK = 100
#: Old dead letters moved per script call (six commands each).
MOVE_CHUNK = 100


def _canonical(queue_name: str) -> str:
    """A delay queue's dead letters are its queue's (as in Dramatiq: no ``default.DQ.XQ``)."""
    return queue_name[:-3] if queue_name.endswith(".DQ") else queue_name


def dead_letter_keys(namespace: str, queue_name: str) -> list[str]:
    """The queue's dead letters: the sorted set of job ids, then the hash of their bodies."""
    key = f"{namespace}:{_canonical(queue_name)}.dead"
    return [key, key + ".msgs"]


def old_dead_letter_keys(namespace: str, queue_name: str) -> list[str]:
    """Dramatiq's dead-letter set and hash of the queue (keyed by Redis message id)."""
    key = f"{namespace}:{_canonical(queue_name)}.XQ"
    return [key, key + ".msgs"]


# KEYS: the ack set, the queue's message hash, the dead-letter set, the dead-letter hash.
# ARGV: the Redis message id, the job id, the time in ms. Dramatiq's "nack" (out of the ack set,
# body into the dead letters), but the dead letter is filed under its job id. Returns 1 if moved.
NACK = """
if redis.call('srem', KEYS[1], ARGV[1]) == 0 then return 0 end
local body = redis.call('hget', KEYS[2], ARGV[1])
if not body then return 0 end
redis.call('zadd', KEYS[3], ARGV[3], ARGV[2])
redis.call('hset', KEYS[4], ARGV[2], body)
redis.call('hdel', KEYS[2], ARGV[1])
return 1
"""

# KEYS: the old set and hash, the new set and hash. ARGV: pairs of (Redis message id, job id).
# Each old entry moves under its job id, with its time; one already there (the job was dead-lettered
# again since) is kept. Returns how many moved.
_MOVE_OLD = """
local n = 0
for i = 1, #ARGV, 2 do
  local old, job = ARGV[i], ARGV[i + 1]
  local body = redis.call('hget', KEYS[2], old)
  if body and redis.call('hsetnx', KEYS[4], job, body) == 1 then
    redis.call('zadd', KEYS[3], redis.call('zscore', KEYS[1], old) or 0, job)
    n = n + 1
  end
  redis.call('zrem', KEYS[1], old)
  redis.call('hdel', KEYS[2], old)
end
if redis.call('hlen', KEYS[2]) == 0 then redis.call('unlink', KEYS[1]) end
return n
"""


def drop_dead_letters(client: redis.Redis, namespace: str, queue: str, job_ids: Iterable[str] | None = None) -> int:
    """Remove these jobs' dead letters (or all the queue's) from Redis; returns how many went.

    All of them: ``UNLINK`` (Redis frees a big hash in the background), the old layout's keys too.
    """
    keys = dead_letter_keys(namespace, queue)
    if job_ids is None:
        count = int(client.zcard(keys[0]))
        client.unlink(*keys, *old_dead_letter_keys(namespace, queue))
        return count
    ids = list(job_ids)
    if not ids:
        return 0
    # NOTE: no MULTI: a transaction would hold Redis for all the chunks at once. A dead letter whose
    # HDEL a lost connection missed is removed by the next drop of its id.
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(ids), DROP_CHUNK):
        chunk = ids[start : start + DROP_CHUNK]
        pipe.zrem(keys[0], *chunk)
        pipe.hdel(keys[1], *chunk)
    return sum(int(removed) for removed in pipe.execute()[::2])


def _job_id(body: bytes) -> str | None:
    try:
        message_id = json.loads(body)["message_id"]
    except (ValueError, KeyError, TypeError):
        return None
    return message_id if isinstance(message_id, str) else None


@dataclass
class OldDeadLetters:
    """Moves a queue's dead letters of Dramatiq's layout into the new one, a bounded number per ``step``.

    The job ids are read from the bodies here, not in Redis. A moved dead letter whose job is no
    longer dead in the store (``still_dead`` says which are) is dropped: it was requeued or pruned
    before it could be found by its id.
    """

    client: redis.Redis
    namespace: str
    queue: str
    still_dead: Callable[[list[str]], set[str]]
    count_per_call: int = 100
    cursor: int = 0

    def step(self, budget: int) -> tuple[int, bool]:
        """Move up to about ``budget`` entries; returns how many were read, and whether none are left."""
        old = old_dead_letter_keys(self.namespace, self.queue)
        new = dead_letter_keys(self.namespace, self.queue)
        script: Any = self.client.register_script(_MOVE_OLD)
        read = 0
        while read < budget:
            found: tuple[int, dict[bytes, bytes]]
            found = self.client.hscan(old[1], self.cursor, count=self.count_per_call)  # type: ignore[assignment]
            self.cursor, entries = int(found[0]), found[1]
            pairs: list[str] = []
            jobs: list[str] = []
            for redis_id, body in entries.items():
                old_id = redis_id.decode()
                job_id = _job_id(body)
                # A body that does not decode names no job: it stays under its Redis id.
                pairs += [old_id, job_id or old_id]
                if job_id is not None:
                    jobs.append(job_id)
            read += len(entries)
            for start in range(0, len(pairs), 2 * MOVE_CHUNK):
                script(keys=[*old, *new], args=pairs[start : start + 2 * MOVE_CHUNK])
            if jobs:
                gone = set(jobs) - self.still_dead(jobs)
                drop_dead_letters(self.client, self.namespace, self.queue, sorted(gone))
            if self.cursor == 0:
                if not self.client.exists(old[1]):
                    # Members with no body (Dramatiq writes both, so only a partial write leaves one).
                    self.client.unlink(old[0])
                    return read, True
                # Written to while moving (an older worker still running): round again next time.
                return read, False
        return read, False
