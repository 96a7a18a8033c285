"""Claims made before messages are handed to worker threads, so a thread starts its job without waiting.

Claimed one by one, every job waits for a commit of the status writer before
it runs, and a process runs at most one job per thread per commit. Here the
consumer claims the next messages of its prefetch in one commit while the
threads run the jobs claimed before, and a thread takes its claim ready-made.

A claimed job is ``running`` in the store, so a consumer hands out no more
than its threads will start soon: one per idle thread, plus, once the jobs are
seen to be short, as many rounds as the threads run while one claim commit is
under way (for long jobs a claimed message would show ``running`` while it
waited). A slow commit (PostgreSQL's flush to disk, a busy machine) thus gets
more claims per commit instead of starving the threads, and a job claimed
ahead waits about one commit before it starts. The rest wait unclaimed in the consumer. A claim
is given back (the row queued again, the attempt not counted) when Dramatiq
puts its message back (shutdown, reconnect). After a crash the supervisor gives them back
too, and counts the attempts the process's threads were inside: both are marked in the
process's ``HeldJobs`` file (``held_jobs.py``) as they are made and taken.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence

from dramatiq.message import Message

from services.worker.held_jobs import HeldJobs
from shared.store.attempts import Claim, ClaimOutcome, ClaimRequest

log = logging.getLogger(__name__)

#: Jobs shorter than this on average (seconds) get a round of claims ahead of the idle threads.
SHORT_JOB_S = 0.05
#: Weight of the newest duration in the running average.
_WEIGHT = 0.05
#: The average assumed before any job ran: long, so a process claims ahead only once it has seen short jobs.
_START_MEAN_S = 1.0
#: Most rounds of claims ahead of the threads (with the running round, the worker's prefetch of 8 per thread).
MAX_ROUNDS_AHEAD = 7


class Reservations:
    def __init__(
        self,
        *,
        claim_many: Callable[[list[ClaimRequest]], list[Claim]],
        unclaim: Callable[[list[str]], object],
        busy: Callable[[], int],
        owner: str,
        lease_s: float,
        held: HeldJobs | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.claim_many = claim_many
        self.unclaim = unclaim
        #: How many jobs this process is running now.
        self.busy = busy
        self.owner = owner
        self.lease_s = lease_s
        #: What the supervisor reads if this process dies: claims ahead, and the jobs threads took.
        self.held = held or HeldJobs(None)
        #: Worker threads of this process (0: claim nothing ahead; set when the worker starts).
        self.threads = 0
        self._mean_s = _START_MEAN_S
        #: Running average of how long a claim commit takes (seconds), as the consumer waits for it.
        self._claim_s = 0.0
        self._clock = clock
        self._by_message: dict[str, Claim] = {}
        self._lock = threading.Lock()
        self._freed = threading.Event()

    # -- the consumer's side -----------------------------------------------

    def ready(self, candidates: Sequence[Message[object] | None]) -> int:
        """How many of the leading ``candidates`` may be handed out now; claims them in one commit.

        ``None`` stands for a message that needs no claim here (it will be dead-lettered or
        delayed). A failed commit claims nothing and lets all through: each thread then
        claims its own job, waiting out a store outage there.
        """
        self._freed.clear()
        lead = self.threads * self.rounds_ahead()
        busy = self.busy()
        with self._lock:
            room = self.threads + lead - busy - len(self._by_message)
        chosen: list[Message[object]] = []
        count = 0
        for message in candidates:
            if message is not None:
                if len(chosen) >= room:
                    break
                chosen.append(message)
            count += 1
        if not chosen:
            return count
        # NOTE: marked before the claim commits, so a process that dies right after has them marked.
        self.held.ahead(m.message_id for m in chosen)
        started_s = self._clock()
        try:
            claims = self.claim_many([ClaimRequest(m.message_id, self.owner, self.lease_s) for m in chosen])
            self._claim_s += _WEIGHT * (self._clock() - started_s - self._claim_s)
        except Exception as exc:
            self.held.not_ahead(m.message_id for m in chosen)
            log.warning("could not claim %d job(s) ahead (%s); each is claimed at its start", len(chosen), exc)
            return len(candidates)
        self.held.not_ahead(
            m.message_id for m, c in zip(chosen, claims, strict=True) if c.outcome is not ClaimOutcome.CLAIMED
        )
        with self._lock:
            for message, claim in zip(chosen, claims, strict=True):
                self._by_message[message.options["redis_message_id"]] = claim
        return count

    def rounds_ahead(self) -> int:
        """Rounds of claims made ahead of the threads: none for long jobs; for short ones, what the threads
        run while a claim commits (at least one round, at most ``MAX_ROUNDS_AHEAD``)."""
        if self._mean_s >= SHORT_JOB_S:
            return 0
        return max(1, min(MAX_ROUNDS_AHEAD, math.ceil(self._claim_s / max(self._mean_s, 1e-6))))

    def wait(self, timeout_s: float) -> None:
        """Until a thread frees room (or ``timeout_s``)."""
        self._freed.wait(timeout_s)

    def give_back(self, redis_message_ids: Sequence[str]) -> None:
        """Messages go back to the queue: their jobs' claims first (raises if the store refuses)."""
        with self._lock:
            claims = [self._by_message.pop(key, None) for key in redis_message_ids]
        job_ids = [c.job.id for c in claims if c is not None and c.outcome is ClaimOutcome.CLAIMED and c.job]
        if job_ids:
            self.unclaim(job_ids)
            self.held.not_ahead(job_ids)

    # -- the worker threads' side ------------------------------------------

    def take(self, redis_message_id: str) -> Claim | None:
        """The claim made for this message before it was handed out, if any (once).

        A job claimed here is about to run on this thread: from now on a death of the process
        counts its attempt (until ``observe``).
        """
        with self._lock:
            claim = self._by_message.pop(redis_message_id, None)
        if claim is not None and claim.outcome is ClaimOutcome.CLAIMED and claim.job is not None:
            self.held.enter(claim.job)
            return claim
        # An attempt of this thread that ended without ``observe`` (skipped) is over too.
        self.held.leave()
        if claim is not None:
            self._freed.set()  # skipped: its room is free at once
        return claim

    def observe(self, elapsed_s: float) -> None:
        """A job ran for ``elapsed_s``: its thread is free, and the running average moves."""
        self.held.leave()
        self._mean_s += _WEIGHT * (elapsed_s - self._mean_s)
        self._freed.set()

    def job_ids(self) -> list[str]:
        """Jobs claimed here and not started yet (their leases are renewed like running ones)."""
        with self._lock:
            return [c.job.id for c in self._by_message.values() if c.outcome is ClaimOutcome.CLAIMED and c.job]

    def holds(self, job_id: str) -> bool:
        """Whether a job is claimed here for a message not handed to a thread yet."""
        with self._lock:
            return any(c.job is not None and c.job.id == job_id for c in self._by_message.values())

    def drop_jobs(self, job_ids: set[str]) -> list[Claim]:
        """Forget the unstarted claims of these jobs and return them (their messages then skip at start)."""
        with self._lock:
            gone = [key for key, c in self._by_message.items() if c.job is not None and c.job.id in job_ids]
            dropped = [self._by_message.pop(key) for key in gone]
        self.held.not_ahead(c.job.id for c in dropped if c.job is not None)
        self._freed.set()
        return dropped
