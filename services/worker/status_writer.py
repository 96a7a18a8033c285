"""Group commit: one thread per worker process writes the claims and finishes of all its threads.

Eight threads each committing their own claim fight over the SQLite write
lock (and PostgreSQL round trips add up); gathered into one transaction,
a busy process pays one commit for many jobs. A claim's caller blocks until
the commit that holds its write is done; a successful finish is handed over
with ``finish_later`` and its message acked only once that commit is done
(``services/worker/acker.py``), so "durable before ack" still holds without
the worker thread waiting for it.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from services.worker.callbacks import Callbacks
from shared.batches import take_batch
from shared.job import JobStatus
from shared.store.attempts import Claim, ClaimRequest, FinishRequest
from shared.store.engine import STORE_DOWN
from shared.store.protocol import JobStoreProtocol

log = logging.getLogger(__name__)


#: The longest a write handed over with ``finish_later`` waits between tries while the store is down.
MAX_RETRY_DELAY_S = 5.0


@dataclass
class _Pending:
    #: A list of claims commits together (all or none), so its caller knows what was written.
    request: ClaimRequest | FinishRequest | list[ClaimRequest]
    future: Future[Any]
    #: Tried again until it commits (nobody waits to retry it).
    keep_trying: bool = False


class StatusWriter:
    """The one writer thread of a worker process; ``callbacks`` publishes the callback jobs it committed."""

    def __init__(self, store: JobStoreProtocol, *, callbacks: Callbacks | None = None, max_batch: int = 256) -> None:
        self.store = store
        #: The on_success / on_failure callbacks (None: none are submitted).
        self.callbacks = callbacks
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="jobrelay-status-writer", daemon=True)
        self._thread.start()

    def claim(self, request: ClaimRequest) -> Claim:
        """As ``JobStore.claim``, committed together with the other threads' writes."""
        claim: Claim = self._submit(request)
        return claim

    def claim_many(self, requests: list[ClaimRequest]) -> list[Claim]:
        """Several claims, committed together (raises what the commit raised)."""
        claims: list[Claim] = self._submit(list(requests))
        return claims

    def finish(self, request: FinishRequest) -> bool:
        """As ``JobStore.finish``: False when the lease passed to another worker."""
        done: bool = self._submit(request)
        return done

    def finish_later(self, request: FinishRequest) -> Future[bool]:
        """Queue a finish without waiting: the future is done once it is committed.

        A store outage does not fail it: it is tried again, with a growing pause, until it commits.
        """
        future: Future[bool] = Future()
        self._queue.put(_Pending(request, future, keep_trying=True))
        return future

    def _submit(self, request: ClaimRequest | FinishRequest | list[ClaimRequest]) -> Any:
        future: Future[Any] = Future()
        self._queue.put(_Pending(request, future))
        return future.result()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        self._retry_delay_s = 0.05
        while True:
            batch, stopping = take_batch(self._queue, self.max_batch)
            if batch:
                self._commit(batch)
            if stopping:
                return

    def _commit(self, batch: list[_Pending]) -> None:
        claims: list[_Pending] = []
        requests: list[ClaimRequest] = []
        finishes: list[_Pending] = []
        finish_requests: list[FinishRequest] = []
        for pending in batch:
            if isinstance(pending.request, FinishRequest):
                finishes.append(pending)
                finish_requests.append(pending.request)
            else:
                claims.append(pending)
                requests.extend(pending.request if isinstance(pending.request, list) else [pending.request])
        try:
            claimed, finished = self.store.commit_batch(requests, finish_requests)
        except Exception as exc:
            if not isinstance(exc, STORE_DOWN):
                # NOTE: a write the store refuses (a value it cannot encode, a constraint) fails the
                # whole transaction; retried as one, it would hold every job beside it for good.
                self._refused(batch, exc)
                return
            # A waiting caller sees the failure and retries (the store may be down); the writes
            # nobody waits for go back in the queue after a pause.
            kept = [pending for pending in batch if pending.keep_trying]
            for pending in batch:
                if not pending.keep_trying:
                    pending.future.set_exception(exc)
            if kept:
                log.warning(
                    "could not commit %d finished job(s) (%s); trying again in %.2fs",
                    len(kept),
                    type(exc).__name__,
                    self._retry_delay_s,
                )
                time.sleep(self._retry_delay_s)
                self._retry_delay_s = min(MAX_RETRY_DELAY_S, self._retry_delay_s * 2)
                for pending in kept:
                    self._queue.put(pending)
            return
        self._retry_delay_s = 0.05
        if self.callbacks is not None:
            for request, done in zip(finish_requests, finished, strict=True):
                # NOTE: here, after the commit that wrote the callback's row and before its caller
                # hears of it, whichever path the finish took (a refused outcome recorded failed
                # brings a callback of its own).
                self.callbacks.committed(request, done)
        answers = iter(claimed)
        for pending in claims:
            if isinstance(pending.request, list):
                pending.future.set_result([next(answers) for _ in pending.request])
            else:
                pending.future.set_result(next(answers))
        for pending, done in zip(finishes, finished, strict=True):
            pending.future.set_result(done)

    def _refused(self, batch: list[_Pending], exc: Exception) -> None:
        """Commit the writes of a refused batch one by one: the others go through at once, and only
        the write the store refuses on its own fails (a finish is recorded failed instead)."""
        if len(batch) > 1:
            for pending in batch:
                self._commit([pending])
            return
        [pending] = batch
        request = pending.request
        if isinstance(request, FinishRequest) and request.status is not JobStatus.FAILED:
            log.error("job %s: the store refused its outcome (%s); recording it failed", request.job_id, exc)
            error = {
                "type": "OutcomeNotStored",
                "message": f"the store refused this job's outcome: {type(exc).__name__}: {exc}"[:2000],
                "retryable": False,
            }
            fields = {} if self.callbacks is None else self.callbacks.failure_fields(self.store, request.job_id, error)
            failed = FinishRequest(
                request.job_id,
                request.owner,
                JobStatus.FAILED,
                error=error,
                attempt=request.attempt,
                started_at=request.started_at,
                **fields,
            )
            self._commit([_Pending(failed, pending.future, pending.keep_trying)])
            return
        if isinstance(request, FinishRequest) and request.callback is not None:
            # The failure itself may be fine and its callback's row what the store refuses.
            log.error("job %s: the store refused its on_failure callback (%s); recording the failure alone",
                      request.job_id, exc)  # fmt: skip
            why = f"callback {request.callback.task!r} not submitted: the store refused it: {type(exc).__name__}: {exc}"
            why = why[:2000]
            alone = dataclasses.replace(request, callback=None, callback_outbox_id=None, callback_error=why)
            self._commit([_Pending(alone, pending.future, pending.keep_trying)])
            return
        log.error("the store refused a write for good (%s: %s)", type(exc).__name__, exc)
        pending.future.set_exception(exc)
