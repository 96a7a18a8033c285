"""``/readyz`` answers within a second, whatever its dependencies do."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from falcon import testing

from services.api.app import create_app
from services.api.resources.health import READY_TIMEOUT_S
from shared.broker.publishing import build_broker
from shared.redis_server import RedisServer
from shared.settings import Settings
from shared.store.engine import create_store_engine, migrate
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry
from tests.reliability.proxy import TcpProxy


@pytest.fixture
def redis_proxy(redis_server: RedisServer) -> Iterator[TcpProxy]:
    proxy = TcpProxy("127.0.0.1", redis_server.port).start()
    yield proxy
    proxy.close()


@pytest.fixture
def ready_client(redis_proxy: TcpProxy, sqlite_url: str) -> Iterator[testing.TestClient]:
    """An API whose Redis is reached through ``redis_proxy``."""
    engine = create_store_engine(sqlite_url)
    migrate(engine)
    redis_url = f"redis://127.0.0.1:{redis_proxy.port}/0"
    app = create_app(
        Settings(redis_url=redis_url, api_auth=False),
        store=JobStore(engine),
        registry=TaskRegistry(engine),
        broker=build_broker(redis_url),
    )
    yield testing.TestClient(app)
    engine.dispose()


def test_readyz_says_not_ready_within_a_second_while_a_dependency_is_silent(
    ready_client: testing.TestClient, redis_proxy: TcpProxy
) -> None:
    assert ready_client.simulate_get("/readyz").status_code == 200
    # Given Redis silent (its client waits 10 s for an answer)
    redis_proxy.black_hole()
    threads_before = threading.active_count()
    for _ in range(3):
        started = time.monotonic()
        resp = ready_client.simulate_get("/readyz")
        took = time.monotonic() - started
        # Then /readyz answers 503 naming the silent one, after READY_TIMEOUT_S and well within a second
        assert resp.status_code == 503 and resp.json["checks"] == {"store": "ok", "redis": "Timeout"}
        assert READY_TIMEOUT_S - 0.05 < took < 1.0
    # And the unanswered question is not asked again meanwhile: at most one probe waits per dependency
    assert threading.active_count() <= threads_before + 1
    # And once Redis answers again, so does /readyz
    redis_proxy.restore()
    deadline = time.monotonic() + 15
    while ready_client.simulate_get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "/readyz did not say ready again"
        time.sleep(0.1)
