"""Outbox entries the API has sent: deleted in the background, off the request path.

The API writes new jobs already marked published plus one outbox entry listing them;
once Redis has the messages the entry is deleted here (riding in the next commit or
a background write). An entry left behind is the relay's (``services/scheduler/relay.py``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class BackgroundWrites:
    """Hands ids to ``write`` (a store method) in a background thread, many per call, off the
    request's path: the published marks of rows written unpublished, the deletion of the
    outbox entries of published commits.

    NOTE: a write lost to a crash only means the relay publishes those jobs once more,
    and the worker's claim skips the duplicates; the 202 never waits for it.
    """

    def __init__(
        self, write: Callable[[list[str]], None], what: str, *, interval_s: float = 0.02, max_batch: int = 5000
    ) -> None:
        self.write = write
        self.what = what
        self.interval_s = interval_s
        self.max_batch = max_batch
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        threading.Thread(target=self._run, name=f"jobrelay-{what.replace(' ', '-')}", daemon=True).start()

    def add(self, entry_ids: list[str]) -> None:
        with self._lock:
            self._pending.extend(entry_ids)
        self._wake.set()

    def take(self) -> list[str]:
        """Hand over the pending ids (at most ``max_batch``) to a caller that deletes them in its own write."""
        with self._lock:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        return batch

    def flush(self) -> None:
        batch = self.take()
        if batch:
            try:
                self.write(batch)
            except Exception as exc:
                log.warning("could not write %d %s (the relay will resend those jobs): %s", len(batch), self.what, exc)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self.interval_s)
            self._wake.clear()
            self.flush()
            if self._pending:
                self._wake.set()
