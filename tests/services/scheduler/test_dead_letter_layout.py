"""Dead letters an older version left in Dramatiq's layout are moved under their job ids by the leader's ticks."""

from __future__ import annotations

import redis

from services.scheduler.dead_letter_layout import OldLayout
from shared.broker.dead_letters import dead_letter_keys, old_dead_letter_keys
from shared.broker.publishing import NAMESPACE
from shared.job import JobStatus
from shared.store.jobs import JobStore
from tests.shared.broker.test_dead_letters import store_dead_letters
from tests.shared.store.test_jobs import make_job


def test_old_dead_letters_of_every_queue_move_over_ticks(redis_client: redis.Redis, store: JobStore) -> None:
    # Given dead jobs of the catalog's queue and of a queue no task names any more, with old-layout
    # dead letters, and an old dead letter of a job requeued since
    dead = [make_job(status=JobStatus.FAILED, dead=True) for _ in range(1_500)]
    retired = [make_job(status=JobStatus.FAILED, dead=True, queue="retired") for _ in range(10)]
    requeued = make_job()
    store.insert([*dead, *retired, requeued])
    store_dead_letters(redis_client, "default", [job.id for job in dead] + [requeued.id], old=True)
    store_dead_letters(redis_client, "retired", [job.id for job in retired], old=True)
    layout = OldLayout(redis_client, store, lambda: ["default", "empty"], budget=500)
    # When the ticks run until nothing is left
    reads = []
    while read := layout.run():
        reads.append(read)
        assert len(reads) < 20
    # Then it took several bounded ticks, and every old key is gone
    assert len(reads) >= 3 and max(reads) <= 500 + 2 * 500
    assert sum(reads) == 1_500 + 1 + 10
    for queue in ("default", "retired"):
        assert not redis_client.exists(*old_dead_letter_keys(NAMESPACE, queue))
    # and the dead letters of dead jobs are under their ids; the requeued job's is gone
    assert redis_client.zcard(dead_letter_keys(NAMESPACE, "default")[0]) == 1_500
    assert not redis_client.hexists(dead_letter_keys(NAMESPACE, "default")[1], requeued.id)
    assert redis_client.hlen(dead_letter_keys(NAMESPACE, "retired")[1]) == 10
    # And an old worker still writing the old layout later (an upgrade in progress) is caught up
    late = make_job(status=JobStatus.FAILED, dead=True)
    store.insert([late])
    store_dead_letters(redis_client, "default", [late.id], old=True)
    assert layout.run() == 1 and layout.run() == 0
    assert redis_client.hexists(dead_letter_keys(NAMESPACE, "default")[1], late.id)
