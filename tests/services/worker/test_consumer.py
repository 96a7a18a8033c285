"""The worker's consumer: it waits for a wake-up token when idle, and puts back what a replaced one dropped."""

from __future__ import annotations

import threading
import time

import redis

from shared.broker.waking import wake_key
from tests.services.worker.conftest import worker_broker
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
