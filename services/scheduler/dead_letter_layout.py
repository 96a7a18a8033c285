"""Dead letters an older version left in Dramatiq's layout, moved under their job ids a bounded step at a time.

``shared/broker/dead_letters.py`` files dead letters by job id; Dramatiq's layout (``<q>.XQ``,
keyed by the random Redis message id) cannot be searched by job without reading it all. The
scheduler leader moves what is left of it on each ``maintenance.reconcile`` tick, at most
``budget`` entries per tick: the queues of the catalog are looked at every time (a worker of the
older version still running during an upgrade writes there), and any other queue holding old
dead letters is found once, by a scan of the key names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis

from shared.broker.dead_letters import OldDeadLetters, old_dead_letter_keys
from shared.broker.publishing import NAMESPACE
from shared.store.jobs import JobStore

log = logging.getLogger(__name__)


class OldLayout:
    """Run by the scheduler leader every ``maintenance.reconcile`` tick."""

    def __init__(
        self, client: redis.Redis, store: JobStore, queues: Callable[[], list[str]], *, budget: int = 20_000
    ) -> None:
        self.client = client
        self.store = store
        self.queues = queues
        self.budget = budget
        self._found: set[str] | None = None
        self._moving: dict[str, OldDeadLetters] = {}

    def run(self) -> int:
        """Move up to ``budget`` old dead letters; returns how many were read."""
        if self._found is None:
            self._found = self._scan()
        names = sorted(set(self.queues()) | self._found)
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.exists(old_dead_letter_keys(NAMESPACE, name)[1])
        left = [name for name, exists in zip(names, pipe.execute(), strict=True) if exists]
        read = 0
        for name in left:
            if read >= self.budget:
                break
            moving = self._moving.setdefault(
                name, OldDeadLetters(self.client, NAMESPACE, name, still_dead=self.store.dead_among)
            )
            done, finished = moving.step(self.budget - read)
            read += done
            if finished:
                del self._moving[name]
                self._found.discard(name)
                log.info("dead letters of queue %s moved to the layout by job id", name)
        return read

    def _scan(self) -> set[str]:
        prefix, suffix = f"{NAMESPACE}:", ".XQ.msgs"
        found = set()
        for key in self.client.scan_iter(match=f"{prefix}*{suffix}", count=1000):
            found.add(key.decode()[len(prefix) : -len(suffix)])
        return found
