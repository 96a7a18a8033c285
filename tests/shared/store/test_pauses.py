"""Paused queues in the store: idempotent both ways, the first pause's time kept."""

from __future__ import annotations

from shared.store.jobs import JobStore
from shared.store.pauses import QueuePauses


def test_pause_and_resume_are_idempotent(store: JobStore) -> None:
    pauses = QueuePauses(store.engine)
    assert pauses.paused() == set()
    first = pauses.pause("default", paused_by="ops")
    assert pauses.pause("default", paused_by="someone-else") == first
    pauses.pause("emails", paused_by="ops")
    assert pauses.paused() == {"default", "emails"}
    assert pauses.resume("default") is True and pauses.resume("default") is False
    assert pauses.paused() == {"emails"}
    # Another process (a restarted API, the scheduler) reads the same
    assert QueuePauses(store.engine).paused() == {"emails"}
