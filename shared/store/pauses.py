"""Which queues are paused: the source of truth, in SQL, so a pause outlives every process and Redis.

Workers do not read it: they obey the Redis mirror (``shared/broker/pausing.py``),
which the API writes with each change and the scheduler restores from here.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, delete, select

from shared.job import utcnow
from shared.store.engine import write_transaction
from shared.store.models import queue_pauses


class QueuePauses:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def pause(self, queue: str, *, paused_by: str) -> datetime:
        """Pause ``queue`` (idempotent); returns when it was paused (the first time)."""
        with write_transaction(self.engine) as conn:
            row = conn.execute(select(queue_pauses.c.paused_at).where(queue_pauses.c.queue == queue)).first()
            if row is not None:
                paused_at: datetime = row.paused_at
                return paused_at
            now = utcnow()
            conn.execute(queue_pauses.insert().values(queue=queue, paused_at=now, paused_by=paused_by))
            return now

    def resume(self, queue: str) -> bool:
        """Resume ``queue`` (idempotent); whether it was paused."""
        with write_transaction(self.engine) as conn:
            return conn.execute(delete(queue_pauses).where(queue_pauses.c.queue == queue)).rowcount > 0

    def paused(self) -> set[str]:
        with self.engine.connect() as conn:
            return {row.queue for row in conn.execute(select(queue_pauses.c.queue))}
