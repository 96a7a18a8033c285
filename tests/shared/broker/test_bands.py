"""Priority bands on a real Redis: fetched highest first, the starvation rule, put back to their band, counted;
and tenants' lanes (fair sharing): namespaces take turns, priorities hold within each."""

from __future__ import annotations

import time

import dramatiq
import pytest
import redis

from shared.broker.bands import (
    FAIR_EVERY,
    band_of_id,
    band_of_priority,
    lane_of_namespace,
    list_key_of,
    new_redis_id,
    split_lane,
)
from shared.broker.pausing import mirror_pause, mirror_resume, sync_pauses
from shared.broker.publishing import build_broker
from shared.broker.queues import oldest_age_s, queue_stats
from shared.broker.waking import wake_key
from shared.store.jobs import JobStore
from tests.services.worker.conftest import worker_broker


def message(priority: int | None = None, tag: str = "", timestamp_ms: int | None = None) -> dramatiq.Message[object]:
    options = {} if priority is None else {"priority": priority}
    sent: dramatiq.Message[object] = dramatiq.Message(
        queue_name="default", actor_name="a.b", args=(), kwargs={"tag": tag}, options=options
    )
    return sent if timestamp_ms is None else sent.copy(message_timestamp=timestamp_ms)


def fetched_tags(bodies: list[bytes | None] | None) -> list[str]:
    assert bodies is not None
    return [dramatiq.Message.decode(body).kwargs["tag"] for body in bodies if body is not None]


def test_band_ids_round_trip_and_bad_priorities_fall_to_band_0() -> None:
    assert [band_of_id(new_redis_id(p)) for p in range(10)] == list(range(10))
    assert band_of_priority(None) == band_of_priority("9") == band_of_priority(True) == 0
    assert band_of_priority(12) == 9 and band_of_priority(-1) == 0
    assert len(new_redis_id(0)) == 36  # a bare uuid, as Dramatiq's


def test_a_higher_priority_enqueued_later_is_fetched_first(redis_url: str, redis_client: redis.Redis) -> None:
    # Given six messages of priority 0, then one of priority 9 (the reproduction)
    publisher = build_broker(redis_url)
    for index in range(6):
        publisher.enqueue(message(0, tag=f"low{index}"))
    publisher.enqueue(message(9, tag="high"))
    # When a worker fetches them
    worker = worker_broker(redis_url, "fetcher")
    # Then the 9 comes first and the rest keep their order
    assert fetched_tags(worker.fetch_banded("default", 1)) == ["high"]
    assert fetched_tags(worker.fetch_banded("default", 10)) == [f"low{i}" for i in range(6)]
    assert redis_client.scard("dramatiq:__acks__.fetcher.default") == 7


def test_every_priority_goes_before_each_lower_one(redis_url: str) -> None:
    publisher = build_broker(redis_url)
    # enqueue_many (the API's and the relay's path) and enqueue, in rising priority
    publisher.enqueue_many([(message(p, tag=str(p)), None) for p in range(5)])
    for p in range(5, 10):
        publisher.enqueue(message(p, tag=str(p)))
    worker = worker_broker(redis_url, "fetcher")
    assert fetched_tags(worker.fetch_banded("default", 20)) == [str(p) for p in reversed(range(10))]


def test_a_lower_band_gets_one_message_after_every_streak_of_higher_ones(redis_url: str) -> None:
    # Given one waiting low message, then a flood of high ones
    publisher = build_broker(redis_url)
    publisher.enqueue(message(0, tag="low"))
    publisher.enqueue_many([(message(5, tag=f"high{i}"), None) for i in range(3 * FAIR_EVERY)])
    worker = worker_broker(redis_url, "fetcher")
    # When they are fetched a few at a time
    order: list[str] = []
    while batch := fetched_tags(worker.fetch_banded("default", 3)):
        order.extend(batch)
    # Then the low one is taken right after FAIR_EVERY high ones, not after all of them
    assert order.index("low") == FAIR_EVERY
    assert order[FAIR_EVERY + 1 :] == [f"high{i}" for i in range(FAIR_EVERY, 3 * FAIR_EVERY)]


def test_the_lower_bands_take_the_fair_turns_in_turn(redis_url: str) -> None:
    publisher = build_broker(redis_url)
    publisher.enqueue_many([(message(p, tag=f"{p}-{i}"), None) for p in (0, 3) for i in range(2)])
    publisher.enqueue_many([(message(9, tag=f"9-{i}"), None) for i in range(4 * FAIR_EVERY)])
    worker = worker_broker(redis_url, "fetcher")
    order = fetched_tags(worker.fetch_banded("default", 1000))
    turns = [tag for tag in order if not tag.startswith("9-")]
    # Every (FAIR_EVERY + 1)-th message is a lower one, band 3 and band 0 alternating
    assert turns == ["3-0", "0-0", "3-1", "0-1"]
    assert [order.index(tag) for tag in turns] == [(FAIR_EVERY + 1) * k - 1 for k in range(1, 5)]


def test_no_streak_is_counted_while_no_lower_band_waits(redis_url: str) -> None:
    publisher = build_broker(redis_url)
    worker = worker_broker(redis_url, "fetcher")
    publisher.enqueue_many([(message(9, tag="high"), None) for _ in range(3 * FAIR_EVERY)])
    assert len(fetched_tags(worker.fetch_banded("default", 1000))) == 3 * FAIR_EVERY
    publisher.enqueue_many([(message(0, tag="low"), None), (message(9, tag="high"), None)])
    assert fetched_tags(worker.fetch_banded("default", 2)) == ["high", "low"]


def test_messages_put_back_go_to_the_front_of_their_own_band(redis_url: str, redis_client: redis.Redis) -> None:
    publisher = build_broker(redis_url)
    publisher.enqueue_many([(message(p, tag=f"first{p}"), None) for p in (0, 4, 4)])
    worker = worker_broker(redis_url, "fetcher")
    fetched = [dramatiq.Message.decode(b) for b in worker.fetch_banded("default", 3) or [] if b is not None]
    publisher.enqueue_many([(message(p, tag=f"later{p}"), None) for p in (0, 4)])
    # When a worker puts back what it fetched (a shutdown, a reconnect)
    worker.do_requeue("default", *[m.options["redis_message_id"] for m in fetched])
    # Then each is back in its band, ahead of what came later, in its first order
    assert redis_client.llen("dramatiq:default.P4") == 3 and redis_client.llen("dramatiq:default") == 2
    assert fetched_tags(worker.fetch_banded("default", 10)) == ["first4", "first4", "later4", "first0", "later0"]
    assert redis_client.scard("dramatiq:__acks__.fetcher.default") == 5


def test_a_delayed_message_waits_in_the_one_delay_list_with_a_plain_id(
    redis_url: str, redis_client: redis.Redis
) -> None:
    publisher = build_broker(redis_url)
    sent = publisher.enqueue(message(7), delay=60_000)
    assert band_of_id(sent.options["redis_message_id"]) == 0 and sent.options["priority"] == 7
    publisher.enqueue_many([(message(7), 60_000)])
    assert redis_client.llen("dramatiq:default.DQ") == 2
    assert not redis_client.exists("dramatiq:default.DQ.P7", "dramatiq:default.P7")


def test_depth_counts_every_band_and_the_oldest_is_the_oldest_of_any(
    redis_url: str, redis_client: redis.Redis, store: JobStore
) -> None:
    publisher = build_broker(redis_url)
    old = message(0, timestamp_ms=int(time.time() * 1000) - 60_000)
    publisher.enqueue_many([(message(9), None), (message(3), None), (old, None)])
    [stats] = queue_stats(redis_client, store, ["default"])
    assert stats.depth == 3 and not stats.paused
    assert 59 < oldest_age_s(redis_client, "default") < 120
    # flush drops every band
    publisher.flush("default")
    assert queue_stats(redis_client, store, ["default"])[0].depth == 0


def test_a_paused_queue_fetches_nothing_until_resumed(redis_url: str, redis_client: redis.Redis) -> None:
    publisher = build_broker(redis_url)
    worker = worker_broker(redis_url, "fetcher")
    mirror_pause(redis_client, "default")
    publisher.enqueue(message(0, tag="waiting"))
    assert worker.fetch_banded("default", 5) is None and worker.do_fetch("default", 5) == []
    mirror_resume(redis_client, "default")
    assert redis_client.llen(wake_key("default")) >= 1
    assert fetched_tags(worker.fetch_banded("default", 5)) == ["waiting"]


@pytest.mark.parametrize("mirrored", [set(), {"default"}, {"default", "emails"}])
def test_the_mirror_is_put_right_from_the_store(redis_client: redis.Redis, mirrored: set[str]) -> None:
    for queue in mirrored:
        mirror_pause(redis_client, queue)
    paused, resumed = sync_pauses(redis_client, {"default", "reports"})
    assert paused == {"default", "reports"} - mirrored and resumed == mirrored - {"default", "reports"}
    assert sorted(k.decode() for k in redis_client.scan_iter(match="jobrelay:paused:*")) == [
        "jobrelay:paused:default",
        "jobrelay:paused:reports",
    ]


def tenant(namespace: str | None, tag: str, priority: int | None = None) -> dramatiq.Message[object]:
    sent = message(priority, tag=tag)
    return sent if namespace is None else sent.copy(options={"namespace": namespace})


def test_lane_ids_name_their_namespace_and_band() -> None:
    lane, plain = split_lane(new_redis_id(7, "acme"))
    assert lane == "acme" and band_of_id(plain) == 7 and band_of_id(f"T.acme.{plain}") == 7
    plain_id = new_redis_id(0)
    assert split_lane(plain_id) == (None, plain_id)
    assert list_key_of("dramatiq:q", new_redis_id(3, "acme")) == "dramatiq:q.T.acme.P3"
    assert list_key_of("dramatiq:q", new_redis_id(0, "acme")) == "dramatiq:q.T.acme"
    assert list_key_of("dramatiq:q.DQ", new_redis_id(3, "acme")) == "dramatiq:q.DQ"
    assert lane_of_namespace("acme") == "acme"
    assert lane_of_namespace("Not.A.Namespace") is lane_of_namespace(7) is lane_of_namespace(None) is None


def test_namespaces_and_the_shared_lane_take_turns(redis_url: str, redis_client: redis.Redis) -> None:
    # Given a burst of 50 of namespace a, then one job of b and three without a namespace
    publisher = build_broker(redis_url)
    publisher.enqueue_many([(tenant("a", f"a{i}"), None) for i in range(50)])
    publisher.enqueue(tenant("b", "b0"))
    publisher.enqueue_many([(tenant(None, f"s{i}"), None) for i in range(3)])
    assert redis_client.llen("dramatiq:default.T.a") == 50 and redis_client.llen("dramatiq:default") == 3
    # When a worker fetches one at a time
    worker = worker_broker(redis_url, "fetcher")
    order = [tag for _ in range(54) for tag in fetched_tags(worker.fetch_banded("default", 1))]
    # Then the lanes take turns: b's job is third, not 51st; the rest of a's burst follows in order
    assert order[:6] == ["s0", "a0", "b0", "s1", "a1", "s2"]
    assert order[6:] == [f"a{i}" for i in range(2, 50)]
    # And emptied lanes leave the lanes set
    assert worker.fetch_banded("default", 1) == [] and redis_client.scard("dramatiq:default.lanes") == 0


def test_one_fetch_shares_itself_between_the_lanes_waiting(redis_url: str) -> None:
    publisher = build_broker(redis_url)
    publisher.enqueue_many([(tenant("a", f"a{i}"), None) for i in range(1000)])
    publisher.enqueue_many([(tenant("b", f"b{i}"), None) for i in range(3)])
    worker = worker_broker(redis_url, "fetcher")
    first = fetched_tags(worker.fetch_banded("default", 10))
    assert len(first) == 10 and sorted(tag for tag in first if tag.startswith("b")) == ["b0", "b1", "b2"]
    assert all(tag.startswith("a") for tag in fetched_tags(worker.fetch_banded("default", 10)))


def test_priorities_and_their_streaks_hold_within_a_lane(redis_url: str) -> None:
    publisher = build_broker(redis_url)
    publisher.enqueue_many([(tenant("a", f"low{i}", 0), None) for i in range(3)])
    publisher.enqueue(tenant("a", "high", 9))
    publisher.enqueue_many([(tenant("b", f"b{i}"), None) for i in range(3)])
    worker = worker_broker(redis_url, "fetcher")
    order = [tag for _ in range(7) for tag in fetched_tags(worker.fetch_banded("default", 1))]
    assert [tag for tag in order if not tag.startswith("b")] == ["high", "low0", "low1", "low2"]
    assert order[:2] == ["high", "b0"]


def test_lane_messages_put_back_go_back_to_their_lane(redis_url: str, redis_client: redis.Redis) -> None:
    publisher = build_broker(redis_url)
    publisher.enqueue_many([(tenant("a", "a0", 4), None), (tenant("a", "a1"), None)])
    worker = worker_broker(redis_url, "fetcher")
    fetched = [dramatiq.Message.decode(b) for b in worker.fetch_banded("default", 5) or [] if b is not None]
    assert len(fetched) == 2 and redis_client.scard("dramatiq:default.lanes") == 0
    # When a worker puts them back (a shutdown, a reconnect; the crash recovery uses the same list_of)
    worker.do_requeue("default", *[m.options["redis_message_id"] for m in fetched])
    # Then they are in their lane's bands again, and the lane is in the lanes set
    assert redis_client.llen("dramatiq:default.T.a.P4") == 1 and redis_client.llen("dramatiq:default.T.a") == 1
    assert redis_client.smembers("dramatiq:default.lanes") == {b"a"}
    assert fetched_tags(worker.fetch_banded("default", 5)) == ["a0", "a1"]


def test_depth_and_flush_cover_every_lane(redis_url: str, redis_client: redis.Redis, store: JobStore) -> None:
    publisher = build_broker(redis_url)
    old = tenant("a", "old").copy(message_timestamp=int(time.time() * 1000) - 60_000)
    publisher.enqueue_many([(old, None), (tenant("b", "b", 3), None), (tenant(None, "s"), None)])
    [stats] = queue_stats(redis_client, store, ["default"])
    assert stats.depth == 3 and 59 < oldest_age_s(redis_client, "default") < 120
    publisher.flush("default")
    assert queue_stats(redis_client, store, ["default"])[0].depth == 0
    assert not redis_client.exists("dramatiq:default.lanes", "dramatiq:default.T.a", "dramatiq:default.T.b.P3")


def test_with_fair_sharing_off_namespaces_share_the_queue_first_in_first_out(redis_url: str) -> None:
    publisher = build_broker(redis_url, fair_sharing=False)
    publisher.enqueue_many([(tenant("a", f"a{i}"), None) for i in range(5)])
    sent = publisher.enqueue(tenant("b", "b0"))
    assert split_lane(sent.options["redis_message_id"])[0] is None
    worker = worker_broker(redis_url, "fetcher")
    assert fetched_tags(worker.fetch_banded("default", 10)) == [*(f"a{i}" for i in range(5)), "b0"]
