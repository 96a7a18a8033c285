"""The Flow middleware's hooks on the store's twin and Dramatiq's StubBroker, its counts in a real Redis."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import redis
from dramatiq import Message
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import dq_name
from dramatiq.middleware import SkipMessage

from services.worker.middleware.flow import Flow
from shared.catalog import Catalog
from shared.flow.buckets import RATE_TICKET, rate_key
from shared.flow.slots import waiting_key
from shared.job import JobStatus
from shared.store.memory import MemoryJobStore
from tests.shared.store.test_jobs import make_job


class ClaimsAhead:
    """Records the claims given back, and whether a copy of the job already waited then."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.given_back: list[tuple[str, int]] = []

    def give_back(self, redis_message_ids: Sequence[str]) -> None:
        waiting = int(self.client.llen(waiting_key("limits.capped")))  # type: ignore[arg-type]
        self.given_back.extend((redis_id, waiting) for redis_id in redis_message_ids)


@pytest.fixture
def catalog() -> Catalog:
    catalog = Catalog()

    @catalog.task(name="limits.rated", rate_limit="1/m")
    def rated() -> None: ...

    @catalog.task(name="limits.capped", concurrency=1)
    def capped() -> None: ...

    return catalog


@pytest.fixture
def store() -> MemoryJobStore:
    return MemoryJobStore()


@pytest.fixture
def claims_ahead(redis_client: redis.Redis) -> ClaimsAhead:
    return ClaimsAhead(redis_client)


@pytest.fixture
def flow(catalog: Catalog, redis_client: redis.Redis, store: MemoryJobStore, claims_ahead: ClaimsAhead) -> Flow:
    return Flow(
        catalog,
        client=redis_client,
        store=store,
        claims_ahead=claims_ahead,
        owner="w1",
        namespace="dramatiq",
        slot_ttl_s=30,
    )


@pytest.fixture
def broker() -> StubBroker:
    broker = StubBroker()
    broker.declare_queue("default")
    return broker


def delivery(store: MemoryJobStore, task: str, redis_id: str, **options: object) -> MessageProxy:
    job = make_job(task=task)
    store.insert([job])
    options = {"redis_message_id": redis_id, **options}
    return MessageProxy(Message("default", task, (), {}, options, message_id=job.id))


def test_a_job_over_its_rate_is_deferred_with_its_token_reserved(
    flow: Flow, broker: StubBroker, store: MemoryJobStore, claims_ahead: ClaimsAhead
) -> None:
    first = delivery(store, "limits.rated", "r1")
    second = delivery(store, "limits.rated", "r2")
    flow.before_process_message(broker, first)

    with pytest.raises(SkipMessage):
        flow.before_process_message(broker, second)

    # Its claim made ahead went back; its row shows why it waits and until when
    assert [redis_id for redis_id, _ in claims_ahead.given_back] == ["r2"]
    row = store.get(second.message_id)
    assert row.status is JobStatus.SCHEDULED and row.deferred is not None
    shown = row.to_api()["deferred"]
    assert shown["reason"] == "rate_limit" and shown["until"] is not None
    # A copy waits in the delay queue a minute, carrying its reserved token
    [copy] = [Message.decode(data) for data in broker.queues[dq_name("default")].queue]
    assert copy.message_id == second.message_id and copy.options[RATE_TICKET] > 59_000
    assert copy.options["eta"] - copy.message_timestamp > 59_000


def test_a_copy_with_its_token_reserved_starts_without_taking_another(
    flow: Flow, broker: StubBroker, store: MemoryJobStore, redis_client: redis.Redis
) -> None:
    flow.before_process_message(broker, delivery(store, "limits.rated", "r1"))
    next_free = redis_client.get(rate_key("limits.rated"))

    flow.before_process_message(broker, delivery(store, "limits.rated", "r2", **{RATE_TICKET: 60_000}))

    assert redis_client.get(rate_key("limits.rated")) == next_free


def test_a_job_over_its_concurrency_waits_as_a_copy_and_starts_when_the_slot_frees(
    flow: Flow, broker: StubBroker, store: MemoryJobStore, claims_ahead: ClaimsAhead, redis_client: redis.Redis
) -> None:
    first = delivery(store, "limits.capped", "c1")
    second = delivery(store, "limits.capped", "c2")
    flow.before_process_message(broker, first)

    with pytest.raises(SkipMessage):
        flow.before_process_message(broker, second)

    # The claim went back before the copy could be seen waiting; the row says why it waits
    assert claims_ahead.given_back == [("c2", 0)]
    row = store.get(second.message_id)
    assert row.status is JobStatus.QUEUED and row.to_api()["deferred"] == {"reason": "concurrency", "until": None}
    [copy_id] = redis_client.lrange(waiting_key("limits.capped"), 0, -1)
    assert copy_id != b"c2"
    body = redis_client.hget("dramatiq:default.msgs", copy_id)
    copy = Message.decode(body)
    assert copy.message_id == second.message_id and copy.options["redis_message_id"] == copy_id.decode()

    # When the first job ends, its slot frees and the copy goes to the front of the queue
    flow.after_process_message(broker, first)

    assert redis_client.lrange("dramatiq:default", 0, -1) == [copy_id]


def test_tasks_without_limits_pass_untouched(flow: Flow, broker: StubBroker, store: MemoryJobStore) -> None:
    catalog = Catalog()

    @catalog.task(name="limits.none")
    def plain() -> None: ...

    message = delivery(store, "limits.none", "n1")

    flow.before_process_message(broker, message)
    flow.after_process_message(broker, message)
