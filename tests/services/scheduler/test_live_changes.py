"""A running scheduler picks up schedules created, changed and disabled over the API within seconds."""

from __future__ import annotations

import time

import falcon.testing
import pytest

from services.api.app import create_app
from shared.broker.publishing import build_broker
from shared.settings import Settings, parse_api_keys
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry
from tests.services.api.conftest import ADMIN, KEYS
from tests.services.scheduler.conftest import SchedulerStack

PICKUP_S = 5.0


@pytest.fixture
def api(scheduler_stack: SchedulerStack, redis_url: str) -> falcon.testing.TestClient:
    settings = Settings(redis_url=redis_url, api_keys=parse_api_keys(KEYS))
    engine = scheduler_stack.engine
    app = create_app(settings, store=JobStore(engine), registry=TaskRegistry(engine), broker=build_broker(redis_url))
    return falcon.testing.TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"})


def wait_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def test_api_changes_reach_the_running_leader(scheduler_stack: SchedulerStack, api: falcon.testing.TestClient) -> None:
    stack = scheduler_stack
    stack.start("only")
    stack.leader()

    # Given a schedule created over the API, every second
    body = {"id": "live", "task": "diagnostics.echo", "args": {"message": "hi"}, "interval_s": 1}
    assert api.simulate_post("/v1/schedules", json=body).status_code == 201
    created_at = time.time()
    stack.wait_for("two ticks", lambda: len(stack.fire_times("live")) >= 2, PICKUP_S)
    assert stack.fire_times("live")[0] - created_at < PICKUP_S

    # When its interval becomes 3 s
    changed_at = time.time()
    resp = api.simulate_put("/v1/schedules/live", json={"interval_s": 3})
    assert resp.status_code == 200, resp.json
    wait_until(changed_at + PICKUP_S + 0.5)
    # Then the ticks after the pickup time are the 3-second ones only (and there are some)
    later = [t for t in stack.fire_times("live") if t > changed_at + 2]
    assert later and all(int(t) % 3 == 0 for t in later), later
    assert api.simulate_get("/v1/schedules/live").json["last_run_at"] is not None

    # When it is disabled, it stops
    disabled_at = time.time()
    assert api.simulate_put("/v1/schedules/live", json={"enabled": False}).json["enabled"] is False
    wait_until(disabled_at + PICKUP_S)
    assert [t for t in stack.fire_times("live") if t > disabled_at + 2] == []
    assert stack.stop(stack.processes[0]) == 0
