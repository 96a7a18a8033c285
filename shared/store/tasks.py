"""The registered task catalog: what workers declared at boot, read by the API."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from sqlalchemy import Engine, delete, select

from shared.catalog import TaskSpec
from shared.job import utcnow
from shared.store.engine import STORE_DOWN, write_transaction
from shared.store.models import tasks


class TaskRegistry:
    """Task specs in SQL, with a short read cache so the API does not query per request."""

    def __init__(self, engine: Engine, *, cache_s: float = 2.0) -> None:
        self.engine = engine
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._cached: dict[str, TaskSpec] = {}
        self._cached_at = float("-inf")
        #: When the last read failed, and how: the requests that waited for it fail with it.
        self._failure: tuple[float, Exception] | None = None

    def register(self, specs: Iterable[TaskSpec], *, registered_by: str) -> None:
        """Upsert every spec (a new worker image may change a task's queue or schema)."""
        now = utcnow()
        specs = list(specs)
        with write_transaction(self.engine) as conn:
            names = [spec.name for spec in specs]
            if names:
                conn.execute(delete(tasks).where(tasks.c.name.in_(names)))
                conn.execute(
                    tasks.insert(),
                    [
                        {
                            "name": spec.name,
                            "queue": spec.queue,
                            "spec": spec.as_dict(),
                            "registered_at": now,
                            "registered_by": registered_by,
                        }
                        for spec in specs
                    ],
                )
        self._cached_at = float("-inf")

    def all(self) -> dict[str, TaskSpec]:
        return dict(self._current())

    def _current(self) -> dict[str, TaskSpec]:
        """The cached specs (never mutated: a refresh replaces the dict), read again when stale."""
        asked_at = time.monotonic()
        with self._lock:
            if time.monotonic() - self._cached_at > self.cache_s:
                # NOTE: a store that does not answer fails a read after STORE_TIMEOUT_S; the requests
                # that waited for that read fail with it instead of each reading again in turn.
                if self._failure is not None and self._failure[0] >= asked_at:
                    raise self._failure[1]
                try:
                    with self.engine.connect() as conn:
                        rows = conn.execute(select(tasks.c.spec).order_by(tasks.c.name))
                        self._cached = {row.spec["name"]: TaskSpec.from_dict(row.spec) for row in rows}
                except STORE_DOWN as exc:
                    self._failure = (time.monotonic(), exc)
                    raise
                self._cached_at = time.monotonic()
                self._failure = None
            return self._cached

    def queues(self) -> list[str]:
        """The queues of the registered tasks: the ones the workers that registered them serve."""
        return sorted({spec.queue for spec in self._current().values()})

    def knows_queue(self, name: str) -> bool:
        """Whether a registered task uses queue ``name``; a job on any other queue would wait forever."""
        if any(spec.queue == name for spec in self._current().values()):
            return True
        if self.cache_s:
            # A worker may have registered it a moment ago.
            self._cached_at = float("-inf")
            return any(spec.queue == name for spec in self._current().values())
        return False

    def get(self, name: str) -> TaskSpec | None:
        spec = self._current().get(name)
        if spec is None and self.cache_s:
            # A worker may have registered it a moment ago.
            self._cached_at = float("-inf")
            spec = self._current().get(name)
        return spec
