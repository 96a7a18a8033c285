"""The consumer watch starts a consumer thread again when one ended, and the heartbeat reports it down till then."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import dramatiq
import pytest
import redis
from prometheus_client import REGISTRY

from services.worker.consumer_watch import ConsumerWatch
from services.worker.heartbeat import Heartbeat
from shared.store.jobs import JobStore
from tests.disk import CannotMount, Filler, small_tmpfs
from tests.services.worker.conftest import worker_broker


class _Ended(threading.Thread):
    """A consumer thread as one looks after an error escaped it: still meant to run, no longer alive."""

    running = True

    def __init__(self) -> None:
        super().__init__()
        self.start()
        self.join()


def restarts(queue: str) -> float:
    return REGISTRY.get_sample_value("jobrelay_worker_consumer_restarts_total", {"queue": queue}) or 0.0


def test_an_ended_consumer_is_started_again_and_counted(redis_url: str) -> None:
    broker = worker_broker(redis_url, "watch-under-test")
    ran: list[str] = []
    dramatiq.actor(lambda tag: ran.append(tag), actor_name="watched", queue_name="default", broker=broker)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        watch = ConsumerWatch(worker)
        assert watch.down() == []
        # Given the consumer of the delay queue ended (as an error in its close() used to end it)
        worker.consumers["default.DQ"].stop()
        worker.consumers["default.DQ"].join(timeout=5)
        worker.consumers["default.DQ"] = _Ended()  # type: ignore[assignment]
        before = restarts("default.DQ")
        assert watch.down() == ["default.DQ"]
        # When the watch looks
        assert watch.revive() == ["default.DQ"]
        # Then a new consumer serves the queue: a delayed message runs, and the restart is counted
        assert watch.down() == [] and worker.consumers["default.DQ"].is_alive()
        assert restarts("default.DQ") == before + 1
        broker.enqueue(dramatiq.Message("default", "watched", ("later",), {}, {}), delay=50)
        deadline = time.monotonic() + 10
        while ran != ["later"]:
            assert time.monotonic() < deadline, f"the delayed message never ran ({ran})"
            time.sleep(0.02)
    finally:
        worker.stop(timeout=5000)
        broker.close()


def test_the_heartbeat_marks_the_process_down_while_a_consumer_cannot_be_started(
    redis_url: str, store: JobStore, tmp_path: Path
) -> None:
    class Stuck(ConsumerWatch):
        def revive(self) -> list[str]:
            raise RuntimeError("cannot start a thread")

        def down(self) -> list[str]:
            return self.queues

    watch = Stuck(dramatiq.Worker(worker_broker(redis_url, "stuck"), worker_threads=1))
    watch.queues = ["default.DQ"]
    down_file = tmp_path / "consumers-down.1"
    heartbeat = Heartbeat(
        client=redis.Redis.from_url(redis_url),
        store=store,
        claims=_NoClaims(),  # type: ignore[arg-type]
        owner="stuck",
        interval_s=1,
        lease_s=30,
        liveness_file=tmp_path / "worker-alive",
        consumers=watch,
        down_file=down_file,
    )
    heartbeat.beat_once()
    assert down_file.read_text() == "default.DQ\n" and (tmp_path / "worker-alive").exists()
    watch.queues = []
    heartbeat.beat_once()
    assert not down_file.exists()


def test_a_full_disk_does_not_end_the_heartbeat(redis_url: str, store: JobStore, tmp_path: Path) -> None:
    class Down(ConsumerWatch):
        def revive(self) -> list[str]:
            return []

        def down(self) -> list[str]:
            return ["default.DQ"]

    try:
        with small_tmpfs(tmp_path / "disk", size="64k") as disk:
            heartbeat = Heartbeat(
                client=redis.Redis.from_url(redis_url),
                store=store,
                claims=_NoClaims(),  # type: ignore[arg-type]
                owner="full",
                interval_s=1,
                lease_s=30,
                liveness_file=disk / "worker-alive",
                consumers=Down(dramatiq.Worker(worker_broker(redis_url, "full"), worker_threads=1)),
                down_file=disk / "consumers-down.1",
            )
            # Given a disk with no room for the readiness file's line
            Filler(disk).fill()
            # When the heartbeat beats, it logs and goes on (raising here would end its thread)
            heartbeat.beat_once()
            heartbeat.beat_once()
    except CannotMount as exc:
        pytest.skip(str(exc))


class _NoClaims:
    def running_job_ids(self) -> list[str]:
        return []
