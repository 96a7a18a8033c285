"""The worker's consumer: it waits for a wake-up token when idle, puts back what a replaced one dropped, and
turns every Redis outage into the connection loss Dramatiq's consumer thread survives."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import dramatiq
import pytest
import redis
from dramatiq.errors import ConnectionClosed

from shared.broker.publishing import build_broker
from shared.broker.waking import wake_key
from tests.services.worker.conftest import worker_broker
from tests.services.worker.redis_faults import Faults, dispatch
from tests.shared.broker.test_waking import message


def test_an_idle_consumer_waits_for_a_token_then_fetches(redis_url: str, redis_client: redis.Redis) -> None:
    broker = worker_broker(redis_url, "consumer-under-test")
    consumer = broker.consume("default", prefetch=4, timeout=100)
    # Given an idle consumer blocked on the empty queue
    results: list[object] = []
    waiting = threading.Thread(target=lambda: results.append(next(consumer)))
    waiting.start()
    deadline = time.monotonic() + 5
    while not any(c.get("cmd") == "blpop" for c in redis_client.client_list()):
        assert time.monotonic() < deadline, "the consumer never blocked"
        time.sleep(0.01)
    # When a message is enqueued
    sent = broker.enqueue(message())
    waiting.join(timeout=5)
    # Then the consumer woke (taking the token) and the next call returns the message
    assert not waiting.is_alive() and results == [None]
    assert redis_client.llen(wake_key("default")) == 0
    received = next(consumer)
    assert received is not None and received.message_id == sent.message_id
    consumer.ack(received)


def test_a_new_consumer_puts_back_what_the_old_one_dropped_and_leaves_what_is_in_hand(
    redis_url: str, redis_client: redis.Redis
) -> None:
    broker = worker_broker(redis_url, "consumer-under-test")
    acks = f"dramatiq:__acks__.{broker.broker_id}.default"
    sent = [broker.enqueue(message()) for _ in range(3)]
    # Given a consumer that handed one message to a worker thread and holds the next prefetched
    first = broker.consume("default", prefetch=2, timeout=100)
    held = next(first)
    assert held is not None and held.message_id == sent[0].message_id
    # and a fetch whose reply a dying connection lost (the script moved the message into the ack set)
    broker.do_fetch("default", 1)
    assert redis_client.scard(acks) == 3 and redis_client.llen("dramatiq:default") == 0
    # When Dramatiq replaces the consumer (as after a connection error)
    second = broker.consume("default", prefetch=2, timeout=100)
    received = [next(second), next(second)]
    # Then the two dropped messages come again, and the one in hand stays with its thread
    assert sorted(m.message_id for m in received if m is not None) == sorted(m.message_id for m in sent[1:])
    assert redis_client.llen("dramatiq:default") == 0
    for proxy in (held, *received):
        assert proxy is not None
        second.ack(proxy)
    assert redis_client.scard(acks) == 0 and broker.ack_sets.in_hand("default") == set()


def test_nacked_and_requeued_messages_leave_the_hand(redis_url: str) -> None:
    broker = worker_broker(redis_url, "consumer-under-test")
    broker.enqueue(message())
    broker.enqueue(message())
    consumer = broker.consume("default", prefetch=2, timeout=100)
    nacked, requeued = next(consumer), next(consumer)
    assert nacked is not None and requeued is not None
    assert len(broker.ack_sets.in_hand("default")) == 2
    consumer.nack(nacked)
    consumer.requeue([requeued])
    assert broker.ack_sets.in_hand("default") == set()


def wait_until(condition: Callable[[], bool], timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("error", [redis.ConnectionError, redis.TimeoutError])
def test_a_failed_enqueue_of_a_due_delayed_message_and_of_the_requeue_after_it_stop_no_consumer(
    redis_url: str, error: type[Exception]
) -> None:
    # Given a worker whose Redis refuses the enqueue of the first due delayed message and then the
    # requeue of the delayed messages its consumer holds (Redis restarting at that moment)
    faults = Faults()
    faults.fail(dispatch("enqueue", "default"), error=error)
    faults.fail(dispatch("requeue", "default.DQ"), error=error)
    broker = worker_broker(redis_url, "delays-under-test", client=faults.client(redis_url))
    ran: list[str] = []
    dramatiq.actor(lambda tag: ran.append(tag), actor_name="noted", queue_name="default", broker=broker)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        # When one delayed message becomes due while another still waits in the consumer
        build_broker(redis_url).enqueue(message_for_actor("noted", "soon"), delay=200)
        build_broker(redis_url).enqueue(message_for_actor("noted", "later"), delay=1500)
        # Then both faults happened, the delay queue's consumer is still alive, and both messages ran
        assert wait_until(lambda: sorted(ran) == ["later", "soon"]), f"ran {ran}; faults {faults.rules}"
        assert all(rule.hits == rule.times for rule in faults.rules[:1])
        assert worker.consumers["default.DQ"].is_alive()
    finally:
        worker.stop(timeout=5000)
        broker.close()


def message_for_actor(actor: str, tag: str) -> dramatiq.Message[object]:
    return dramatiq.Message(queue_name="default", actor_name=actor, args=(tag,), kwargs={}, options={})


@pytest.mark.parametrize("step", ["ack", "nack", "requeue"])
def test_ack_nack_and_requeue_turn_a_redis_timeout_into_a_connection_loss(redis_url: str, step: str) -> None:
    # Given a consumer holding a message, and a Redis whose socket times out on the next such call
    faults = Faults()
    broker = worker_broker(redis_url, f"{step}-under-test", client=faults.client(redis_url))
    broker.enqueue(message())
    consumer = broker.consume("default", prefetch=1, timeout=100)
    held = next(m for m in consumer if m is not None)
    faults.fail(dispatch(step, "default"), error=redis.TimeoutError)
    # When the consumer acks, nacks or puts it back
    # Then Dramatiq's consumer thread gets the error it reconnects on (and retries acks), not another
    with pytest.raises(ConnectionClosed):
        if step == "requeue":
            consumer.requeue([held])
        else:
            getattr(consumer, step)(held)
