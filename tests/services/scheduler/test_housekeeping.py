"""Built-in housekeeping: the schedules, the queue names and the relay (pruning: test_pruning.py)."""

from __future__ import annotations

from datetime import timedelta

import redis
from dramatiq import Message

from services.scheduler.housekeeping import BUILTIN_INTERVALS_S, PRUNE, QueueNames, builtin_schedules
from shared.ids import new_id
from shared.job import utcnow
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry
from tests.services.scheduler.conftest import SchedulerStack
from tests.shared.store.test_jobs import make_job


def test_builtin_schedules_and_queue_names(registry: TaskRegistry) -> None:
    builtins = {s.id: s for s in builtin_schedules()}
    assert {name: s.interval_s for name, s in builtins.items()} == BUILTIN_INTERVALS_S
    assert builtins["maintenance.relay"].interval_s == 1 and builtins["maintenance.prune"].interval_s == 10
    assert {s.id: s.interval_s for s in builtin_schedules(prune_every_s=60)}[PRUNE] == 60
    assert builtins["maintenance.reconcile"].interval_s == 30
    names = QueueNames(registry)
    assert names() == []
    names.refresh()
    assert "default" in names()


def test_the_leader_relays_jobs_left_unpublished_and_counts_them(
    scheduler_stack: SchedulerStack, redis_client: redis.Redis
) -> None:
    # Given a row written unpublished and an outbox entry an API process left behind
    store = JobStore(scheduler_stack.engine)
    old = utcnow() - timedelta(minutes=1)
    unpublished = make_job(created_at=old)
    store.insert([unpublished])
    handed = make_job()
    store.insert([handed], outbox_id=new_id())
    # When a scheduler leads (the relay runs every second, past RELAY_GRACE_S)
    leader = scheduler_stack.start("a")
    scheduler_stack.leader()
    # Then both jobs reach Redis once, and the leader counts them
    scheduler_stack.wait_for("two relayed", lambda: leader.metric("jobrelay_jobs_relayed_total") == 2.0, 15)
    stored: list[bytes] = redis_client.hvals("dramatiq:default.msgs")  # type: ignore[assignment]
    ids = sorted(Message.decode(data).message_id for data in stored)
    assert ids == sorted([unpublished.id, handed.id])
    assert store.outbox_left(older_than=utcnow()) == [] and store.unpublished(older_than=utcnow()) == []
