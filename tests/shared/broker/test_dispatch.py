"""The broker's Redis commands each touch one queue's keys only: they run on a real Redis Cluster.

A cluster routes a script by the keys it declares and refuses one that touches
keys of another hash slot. With a queue's keys in one slot (a hash tag, here
the queue name in braces), every command the broker and a worker's fetch run
(enqueue in each band and a tenant's lane, fetch highest band first, fetch of the delay queue,
requeue, ack, nack, flush, qsize) must work against three primaries, each
queue's keys on the primary that serves its slot.
"""

from __future__ import annotations

from collections.abc import Iterator

import dramatiq
import pytest
import redis
from dramatiq.common import dq_name
from dramatiq.message import Message
from redis.cluster import RedisCluster

from shared.broker.bands import BandedFetch
from shared.broker.dead_letters import dead_letter_keys
from shared.broker.publishing import NAMESPACE, broker_options
from shared.broker.waking import WakingRedisBroker, acks_key
from tests.redis_cluster import RedisClusterGroup


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterGroup]:
    group = RedisClusterGroup(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield group.start()
    finally:
        group.stop()


@pytest.fixture
def client(cluster: RedisClusterGroup) -> Iterator[RedisCluster]:
    client = cluster.client()
    yield client
    client.close()


def two_queues_on_two_primaries(cluster: RedisClusterGroup) -> tuple[str, str]:
    """Queue names (hash-tagged) whose keys live on different primaries."""
    first = "{alpha}"
    port = cluster.port_of(f"{NAMESPACE}:{first}")
    for name in ("beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"):
        if cluster.port_of(f"{NAMESPACE}:{{{name}}}") != port:
            return first, f"{{{name}}}"
    raise AssertionError("every candidate queue hashed to one primary")


def message(queue: str, tag: str, priority: int = 0, namespace: str | None = None) -> dramatiq.Message[object]:
    options: dict[str, object] = {"priority": priority} if priority else {}
    if namespace:
        options["namespace"] = namespace
    return dramatiq.Message(queue_name=queue, actor_name="noted", args=(tag,), kwargs={}, options=options)


def tags(bodies: list[bytes | None] | None) -> list[object]:
    return [Message.decode(body).args[0] for body in bodies or [] if body is not None]


def test_every_command_runs_on_a_cluster_with_each_queues_keys_on_its_primary(
    cluster: RedisClusterGroup, client: RedisCluster
) -> None:
    # Given a broker on a three-primary cluster and two queues whose slots are on different primaries
    broker = WakingRedisBroker(
        **broker_options(client, middleware=[], heartbeat_timeout_s=60, dead_message_ttl_s=3600)  # type: ignore[arg-type]
    )
    alpha, beta = two_queues_on_two_primaries(cluster)
    for queue in (alpha, beta):
        # When messages go in at priorities 0 and 7, one in a tenant's lane, and one delayed
        broker.enqueue(message(queue, "low"))
        broker.enqueue(message(queue, "high", priority=7))
        broker.enqueue(message(queue, "tenant", namespace="acme"))
        broker.enqueue(message(queue, "later"), delay=60_000)
        acks = acks_key(NAMESPACE, broker.broker_id, queue)
        fetch = BandedFetch(client, namespace=NAMESPACE, acks=acks, queue_name=queue)  # type: ignore[arg-type]

        # Then the fetch takes the higher band first, then the lanes in turn, and the delay queue's
        # fetch its message
        first = fetch(1)
        assert tags(first) == ["high"]
        assert sorted(tags(fetch(5))) == ["low", "tenant"]
        delayed = broker.do_fetch(dq_name(queue), 5)
        assert tags(delayed) == ["later"]
        assert broker.do_qsize(queue) == 8  # four bodies stored, four ids in the ack sets
        # and every key of the queue is on the primary serving its slot
        own = redis.Redis(port=cluster.port_of(f"{NAMESPACE}:{queue}"))
        assert own.hlen(f"{NAMESPACE}:{queue}.msgs") == 3 and own.scard(acks) == 3
        own.close()

        # When one goes back, is fetched again and acked, the others are nacked and the delayed one acked
        (high,) = [Message.decode(body) for body in first if body is not None]
        assert broker.do_requeue(queue, high.options["redis_message_id"]) == 1
        again = [Message.decode(body) for body in fetch(5) or [] if body is not None]
        assert [m.args[0] for m in again] == ["high"]
        assert broker.do_ack(queue, high.options["redis_message_id"]) == 1
        for held in client.smembers(acks):  # type: ignore[union-attr]
            assert broker.do_nack(queue, held.decode()) == 1
        (later,) = [Message.decode(body) for body in delayed if body is not None]
        assert broker.do_ack(dq_name(queue), later.options["redis_message_id"]) == 1

        # Then nothing waits or is held, the nacked message is a dead letter, and a flush removes it
        assert broker.do_qsize(queue) == 0
        assert client.zcard(dead_letter_keys(NAMESPACE, queue)[0]) == 2
        broker.flush(queue)
        assert client.zcard(dead_letter_keys(NAMESPACE, queue)[0]) == 0
    broker.close()
