"""Group commit: one thread per worker process writes the claims and finishes of all its threads.

Eight threads each committing their own claim fight over the SQLite write
lock (and PostgreSQL round trips add up); gathered into one transaction,
a busy process pays one commit for many jobs. A caller blocks until the
commit that holds its write is done, so "durable before ack" still holds.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from shared.store.jobs import Claim, ClaimRequest, FinishRequest, JobStore

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    request: ClaimRequest | FinishRequest
    future: Future[Any]


class StatusWriter:
    def __init__(self, store: JobStore, *, max_batch: int = 256) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="jobrelay-status-writer", daemon=True)
        self._thread.start()

    def claim(self, request: ClaimRequest) -> Claim:
        """As ``JobStore.claim``, committed together with the other threads' writes."""
        claim: Claim = self._submit(request)
        return claim

    def finish(self, request: FinishRequest) -> bool:
        """As ``JobStore.finish``: False when the lease passed to another worker."""
        done: bool = self._submit(request)
        return done

    def _submit(self, request: ClaimRequest | FinishRequest) -> Any:
        future: Future[Any] = Future()
        self._queue.put(_Pending(request, future))
        return future.result()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            self._commit(batch)

    def _commit(self, batch: list[_Pending]) -> None:
        claims = [p for p in batch if isinstance(p.request, ClaimRequest)]
        finishes = [p for p in batch if isinstance(p.request, FinishRequest)]
        try:
            claimed, finished = self.store.commit_batch(
                [p.request for p in claims],  # type: ignore[misc]
                [p.request for p in finishes],  # type: ignore[misc]
            )
        except BaseException as exc:
            # Every caller sees the failure and retries (the store may be down).
            for pending in batch:
                pending.future.set_exception(exc)
            return
        for pending, claim in zip(claims, claimed, strict=True):
            pending.future.set_result(claim)
        for pending, done in zip(finishes, finished, strict=True):
            pending.future.set_result(done)
