"""Deterministic crash recovery: dead workers' messages back at the front of their queues, lost attempts recorded.

Dramatiq's own recovery runs at random (one command in a thousand) and can
take hours on an idle queue. Here a worker is dead when its heartbeat in
``dramatiq:__heartbeats__`` is older than ``dead_after_s``; live workers
beat every couple of seconds from a thread of their own, whatever their
tasks are doing.

An attempt that ended with no worker left to record it is recorded by its task's retry policy
(``record_lost``): by the supervisor for the jobs a child process died under
(``services/worker/crashes.py``), by the scheduler's sweep for running rows nobody holds any more
(``services/scheduler/sweeper.py``).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import redis
from dramatiq.broker import Broker

from shared.backoff import backoff_s
from shared.broker.bands import LUA_LIST_OF
from shared.broker.dead_letters import dead_letter_keys
from shared.broker.publishing import NAMESPACE, publish
from shared.broker.waking import WAKE_TOKENS, is_delay_queue, wake_key
from shared.broker.workers import forget_worker
from shared.catalog import TaskSpec
from shared.flow.slots import ConcurrencySlots
from shared.job import Job, JobStatus, utcnow
from shared.store.attempts import FinishRequest
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry
from shared.submission.callbacks import callback_fields

log = logging.getLogger(__name__)

HEARTBEATS = f"{NAMESPACE}:__heartbeats__"

#: Messages a call of the recovery script moves at most: each call's work stays bounded (a delay
#: queue's ack set holds up to a thousand per worker thread).
REQUEUE_BATCH = 100

# KEYS: the ack set, the queue list, the queue's message hash, its wake-up list, the dead-letter
# set and hash (``shared/broker/dead_letters.py``). ARGV: how many ids to take from the ack set at
# most, how many wake tokens to keep at most, the time in ms, how many job ids to drop follow, those
# job ids, then the job ids to dead-letter. A message of a job to drop leaves Redis (its job was
# recorded with a new message, or final); one to dead-letter goes to the dead letters under its job
# id; the rest go back, each to its priority band. Returns how many went back and how many ids are
# left in the ack set.
_REQUEUE = (
    LUA_LIST_OF
    + """
local drop, dead = {}, {}
local n_drop = tonumber(ARGV[4])
for i = 5, 4 + n_drop do drop[ARGV[i]] = true end
for i = 5 + n_drop, #ARGV do dead[ARGV[i]] = true end
local sift = #ARGV > 4
local ids = redis.call('spop', KEYS[1], tonumber(ARGV[1]))
local n = 0
for _, id in ipairs(ids) do
  local job = nil
  local body = nil
  if sift then
    body = redis.call('hget', KEYS[3], id)
    if body then
      local ok, message = pcall(cjson.decode, body)
      if ok and type(message) == 'table' then job = message['message_id'] end
    end
  end
  if job ~= nil and drop[job] then
    redis.call('hdel', KEYS[3], id)
  elseif job ~= nil and dead[job] then
    redis.call('hdel', KEYS[3], id)
    redis.call('zadd', KEYS[5], ARGV[3], job)
    redis.call('hset', KEYS[6], job, body)
  elseif body or redis.call('hexists', KEYS[3], id) == 1 then
    redis.call('lpush', list_of(KEYS[2], id), id)
    n = n + 1
  end
end
if n > 0 and KEYS[4] ~= '' then
  redis.call('lpush', KEYS[4], 1)
  redis.call('ltrim', KEYS[4], 0, tonumber(ARGV[2]) - 1)
end
return {n, redis.call('scard', KEYS[1])}
"""
)


def beat(client: redis.Redis, worker_id: str) -> None:
    client.zadd(HEARTBEATS, {worker_id: int(time.time() * 1000)})


def dead_workers(client: redis.Redis, *, dead_after_s: float) -> list[str]:
    cutoff = int((time.time() - dead_after_s) * 1000)
    members: list[bytes] = client.zrangebyscore(HEARTBEATS, 0, cutoff)  # type: ignore[assignment]
    return [member.decode() for member in members]


def live_workers(client: redis.Redis, workers: Iterable[str], *, dead_after_s: float) -> set[str]:
    """Which of ``workers`` beat within ``dead_after_s`` (one recovered already has no beat at all)."""
    names = list(workers)
    if not names:
        return set()
    cutoff = (time.time() - dead_after_s) * 1000
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.zscore(HEARTBEATS, name)
    beats = pipe.execute()
    return {name for name, beat_ms in zip(names, beats, strict=True) if beat_ms is not None and beat_ms > cutoff}


def requeue_worker(
    client: redis.Redis,
    worker_id: str,
    *,
    drop: Iterable[str] = (),
    dead: Iterable[str] = (),
    batch: int = REQUEUE_BATCH,
) -> int:
    """Move one worker's fetched-but-unacked messages back; returns how many.

    The messages of the jobs in ``drop`` leave Redis instead, and those of the jobs in ``dead``
    go to their dead letters (``record_lost``'s outcomes). Each ack set is emptied ``batch``
    ids per script call.
    """
    script = client.register_script(_REQUEUE)
    prefix = f"{NAMESPACE}:__acks__.{worker_id}."
    dropped, dead_ids = list(drop), list(dead)
    args: list[str | int] = [batch, WAKE_TOKENS, int(time.time() * 1000), len(dropped), *dropped, *dead_ids]
    moved = 0
    for key in client.scan_iter(match=prefix + "*", count=500):
        queue = key.decode()[len(prefix) :]
        queue_key = f"{NAMESPACE}:{queue}"
        wake = "" if is_delay_queue(queue) else wake_key(queue)
        keys = [key, queue_key, queue_key + ".msgs", wake, *dead_letter_keys(NAMESPACE, queue)]
        # NOTE: the set no longer grows (its worker is dead), so this ends; the bound is for a worker
        # that was not dead after all and keeps fetching into it.
        calls = int(client.scard(key)) // batch + 1
        for _ in range(calls):
            back, left = script(keys=keys, args=args)
            moved += int(back)
            if not int(left):
                break
    # Its concurrency slots too, at once: the jobs waiting for them start now, not at their expiry.
    ConcurrencySlots(client, namespace=NAMESPACE, ttl_s=0).release_owner(worker_id)
    client.zrem(HEARTBEATS, worker_id)
    forget_worker(client, worker_id)
    if moved:
        log.warning("requeued %d message(s) of dead worker %s", moved, worker_id)
    return moved


def requeue_orphans(
    client: redis.Redis,
    store: JobStore,
    *,
    dead_after_s: float,
    workers: Iterable[str] | None = None,
    drop: Iterable[str] = (),
    dead: Iterable[str] = (),
) -> int:
    """Recover every dead worker (or the ones named): release their job leases, requeue their messages.

    ``drop`` and ``dead``: jobs whose messages leave Redis or are dead-lettered (``requeue_worker``).
    """
    found = list(workers) if workers is not None else dead_workers(client, dead_after_s=dead_after_s)
    if not found:
        return 0
    # Leases first: a redelivered message must find its job claimable.
    store.release_leases_of(found)
    dropped, dead_ids = list(drop), list(dead)
    return sum(requeue_worker(client, worker_id, drop=dropped, dead=dead_ids) for worker_id in found)


@dataclass
class LostAttempts:
    """Attempts recorded as ended without their worker (``record_lost``), by outcome, as recorded."""

    retrying: list[Job] = field(default_factory=list)
    failed: list[Job] = field(default_factory=list)
    cancelled: list[Job] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.retrying) + len(self.failed) + len(self.cancelled)

    def publish_retries(self, broker: Broker) -> list[str]:
        """The next attempts' messages, each due at its row's ``next_attempt_at``; the ids sent."""
        return publish(broker, self.retrying)


def lost_attempt_end(
    job: Job, spec: TaskSpec | None, *, error_type: str, message: str, now: datetime, rng: random.Random | None = None
) -> FinishRequest:
    """How an attempt that ended with no worker to record it ends, by its task's retry policy.

    The attempt was counted at its claim. A cancel asked for takes effect; a job with retries left
    runs again after its backoff; one without fails for good. ``retryable`` is True: the type of
    error (a process that died, a worker that vanished) may well pass.
    """
    # A row with no lease owner has no attempt to end: its finish matches no row (lost on purpose).
    owner = job.lease_owner or ""
    if job.cancel_requested:
        error = {"type": "Cancelled", "message": "cancelled while running", "retryable": False}
        return FinishRequest(job.id, owner, JobStatus.CANCELLED, error=error)
    error = {"type": error_type, "message": message, "retryable": True}
    if job.attempts > job.max_retries:
        return FinishRequest(job.id, owner, JobStatus.FAILED, error=error)
    delay_s = backoff_s(
        job.attempts,
        min_s=spec.min_backoff_s if spec else 1.0,
        max_s=spec.max_backoff_s if spec else 3600.0,
        rng=rng,
    )
    return FinishRequest(
        job.id, owner, JobStatus.RETRYING, error=error, next_attempt_at=now + timedelta(seconds=delay_s)
    )


def record_lost(
    store: JobStore, registry: TaskRegistry, jobs: Sequence[Job], *, error_type: str, message: str
) -> LostAttempts:
    """Record in one commit how the attempts of these running jobs end (``lost_attempt_end``).

    A row no longer running under the lease it was read with (its worker recorded it after all)
    is left alone. The caller sends the retries' messages (``publish_retries``) and drops or
    dead-letters the old ones.
    """
    lost = LostAttempts()
    if not jobs:
        return lost
    now = utcnow()
    ends = []
    for job in jobs:
        spec = registry.get(job.task)
        end = lost_attempt_end(job, spec, error_type=error_type, message=message, now=now)
        # A failure for good submits the task's on_failure callback in the same commit (the relay publishes it).
        callback = callback_fields(spec, job, end.status, registry, error=end.error)
        # The lost attempt goes into the job's timeline like any other.
        ends.append(replace(end, attempt=job.attempts, started_at=job.started_at, **callback))
    _, held = store.commit_batch([], ends)
    by_status = {JobStatus.RETRYING: lost.retrying, JobStatus.FAILED: lost.failed, JobStatus.CANCELLED: lost.cancelled}
    for job, end, recorded in zip(jobs, ends, held, strict=True):
        if recorded:
            by_status[end.status].append(
                replace(job, status=end.status, error=end.error, next_attempt_at=end.next_attempt_at, lease_owner=None)
            )
    return lost
