"""``/v1/schedules`` over a real store: every status code and every validation path."""

from __future__ import annotations

from datetime import datetime

import pytest
from falcon import testing
from sqlalchemy import Engine

from services.scheduler.housekeeping import builtin_schedules
from shared.store.schedules import Schedule, ScheduleSource, ScheduleStore
from tests.services.api.conftest import ADMIN, READER

AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
AS_READER = {"Authorization": f"Bearer {READER}"}
NIGHTLY = {
    "id": "nightly-echo",
    "task": "diagnostics.echo",
    "args": {"message": "good night"},
    "cron": "0 2 * * *",
    "timezone": "Europe/Berlin",
}


@pytest.fixture
def schedules(engine: Engine) -> ScheduleStore:
    return ScheduleStore(engine)


def post(client: testing.TestClient, body: object) -> testing.Result:
    return client.simulate_post("/v1/schedules", json=body, headers=AS_ADMIN)


def put(client: testing.TestClient, schedule_id: str, body: object) -> testing.Result:
    return client.simulate_put(f"/v1/schedules/{schedule_id}", json=body, headers=AS_ADMIN)


def error_paths(resp: testing.Result) -> list[str]:
    return [e["path"] for e in resp.json["errors"]]


def test_create_answers_201_with_the_schedule_and_location(client: testing.TestClient) -> None:
    resp = post(client, NIGHTLY)
    assert resp.status_code == 201, resp.json
    assert resp.headers["location"] == "/v1/schedules/nightly-echo"
    body = resp.json
    assert set(body) == {"id", "task", "args", "cron", "interval_s", "timezone", "enabled", "misfire",
                         "misfire_grace_s", "next_run_at", "last_run_at", "source", "namespace"}  # fmt: skip
    assert body["source"] == "api" and body["enabled"] is True and body["misfire"] == "coalesce"
    assert body["misfire_grace_s"] == 60 and body["interval_s"] is None and body["last_run_at"] is None
    # 02:00 in Berlin is 00:00 or 01:00 UTC, on a whole minute.
    next_run = datetime.fromisoformat(body["next_run_at"].replace("Z", "+00:00"))
    assert next_run.hour in (0, 1) and next_run.minute == 0
    assert client.simulate_get("/v1/schedules/nightly-echo", headers=AS_READER).json == body


def test_list_shows_builtin_file_and_api_schedules(client: testing.TestClient, schedules: ScheduleStore) -> None:
    schedules.sync(ScheduleSource.BUILTIN, builtin_schedules())
    assert post(client, {**NIGHTLY, "id": "z-api", "cron": None, "interval_s": 30}).status_code == 201
    resp = client.simulate_get("/v1/schedules", headers=AS_READER)
    assert resp.status_code == 200
    items = {item["id"]: item for item in resp.json["items"]}
    assert items["maintenance.relay"]["interval_s"] == 1 and items["maintenance.relay"]["source"] == "builtin"
    assert items["maintenance.requeue_orphans"]["interval_s"] == 2
    assert items["maintenance.prune"]["interval_s"] == 10
    assert items["maintenance.queue_gauges"]["interval_s"] == 15
    assert items["maintenance.reconcile"]["interval_s"] == 30
    assert items["z-api"]["source"] == "api"
    assert client.simulate_get("/v1/schedules?bogus=1", headers=AS_READER).status_code == 422


def test_scopes(client: testing.TestClient) -> None:
    assert client.simulate_get("/v1/schedules", headers={"Authorization": "Bearer wrong-token-123"}).status_code == 401
    # The client's default key has read and write, not admin.
    assert client.simulate_post("/v1/schedules", json=NIGHTLY).status_code == 403
    assert client.simulate_post("/v1/schedules", json=NIGHTLY, headers=AS_READER).status_code == 403
    assert post(client, NIGHTLY).status_code == 201
    assert client.simulate_get("/v1/schedules/nightly-echo").status_code == 200
    assert client.simulate_put("/v1/schedules/nightly-echo", json={"enabled": False}).status_code == 403
    assert client.simulate_delete("/v1/schedules/nightly-echo", headers=AS_READER).status_code == 403


#: Each invalid change to a good body, and where the 422 must point.
INVALID: list[tuple[dict[str, object], list[str]]] = [
    ({"cron": "0 25 * * *"}, ["/cron"]),
    ({"cron": "0 2 * *"}, ["/cron"]),
    ({"cron": "0 2 * * 9"}, ["/cron"]),
    ({"cron": 5}, ["/cron"]),
    ({"cron": None}, ["/cron"]),  # neither cron nor interval_s
    ({"interval_s": 60}, ["/interval_s"]),  # both
    ({"cron": None, "interval_s": 0}, ["/interval_s"]),
    ({"cron": None, "interval_s": 1.5}, ["/interval_s"]),
    ({"cron": None, "interval_s": True}, ["/interval_s"]),
    ({"cron": None, "interval_s": "60"}, ["/interval_s"]),
    ({"timezone": "Mars/Olympus"}, ["/timezone"]),
    ({"timezone": "CEST"}, ["/timezone"]),
    ({"timezone": None}, ["/timezone"]),
    ({"timezone": "Nowhere", "cron": "0 99 * * *"}, ["/timezone", "/cron"]),
    ({"task": "nope.nothing"}, ["/task"]),
    ({"task": ""}, ["/task"]),
    ({"args": {}}, ["/args/message"]),
    ({"args": {"message": 5}}, ["/args/message"]),
    ({"args": {"message": "x", "extra": 1}}, ["/args/extra"]),
    ({"args": [1]}, ["/args"]),
    ({"misfire": "later"}, ["/misfire"]),
    ({"misfire_grace_s": 0}, ["/misfire_grace_s"]),
    ({"misfire_grace_s": "60"}, ["/misfire_grace_s"]),
    ({"enabled": "yes"}, ["/enabled"]),
    ({"bogus": 1}, ["/bogus"]),
    ({"id": "has space"}, ["/id"]),
    ({"id": ""}, ["/id"]),
    ({"id": None}, ["/id"]),
    ({"id": "maintenance.mine"}, ["/id"]),
]


def test_invalid_definitions_answer_422_at_the_field(client: testing.TestClient, schedules: ScheduleStore) -> None:
    # NOTE: one test over every case (not one per case): the store and API fixtures are the slow part.
    for changes, paths in INVALID:
        resp = post(client, {**NIGHTLY, **changes})
        assert resp.status_code == 422, (changes, resp.json)
        assert resp.headers["content-type"] == "application/problem+json"
        assert sorted(error_paths(resp)) == sorted(paths), (changes, resp.json)
    assert schedules.all() == []


def test_malformed_bodies(client: testing.TestClient) -> None:
    as_json = {**AS_ADMIN, "Content-Type": "application/json"}
    assert client.simulate_post("/v1/schedules", body="{", headers=as_json).status_code == 400
    assert client.simulate_post("/v1/schedules", body="{}", headers=AS_ADMIN).status_code == 415
    assert post(client, [1, 2]).status_code == 422
    assert post(client, "x").status_code == 422
    headers = {**AS_ADMIN, "Content-Type": "text/plain"}
    assert client.simulate_post("/v1/schedules", body="{}", headers=headers).status_code == 415


def test_post_of_an_existing_id_conflicts(client: testing.TestClient, schedules: ScheduleStore) -> None:
    assert post(client, NIGHTLY).status_code == 201
    resp = post(client, {**NIGHTLY, "cron": "0 3 * * *"})
    assert resp.status_code == 409
    assert schedules.get("nightly-echo").cron == "0 2 * * *"
    schedules.sync(ScheduleSource.BUILTIN, builtin_schedules())
    assert post(client, {**NIGHTLY, "id": "maintenance.relay"}).status_code == 409


def test_unknown_ids_are_404(client: testing.TestClient) -> None:
    assert client.simulate_get("/v1/schedules/nope").status_code == 404
    assert put(client, "nope", {"enabled": False}).status_code == 404
    assert client.simulate_delete("/v1/schedules/nope", headers=AS_ADMIN).status_code == 404


def test_put_changes_what_it_names_and_keeps_the_rest(client: testing.TestClient, schedules: ScheduleStore) -> None:
    post(client, NIGHTLY)
    resp = put(client, "nightly-echo", {"interval_s": 30, "misfire": "skip"})
    assert resp.status_code == 200, resp.json
    body = resp.json
    assert body["interval_s"] == 30 and body["cron"] is None and body["misfire"] == "skip"
    assert body["args"] == {"message": "good night"} and body["timezone"] == "Europe/Berlin"
    next_run = datetime.fromisoformat(body["next_run_at"].replace("Z", "+00:00"))
    assert int(next_run.timestamp()) % 30 == 0
    assert schedules.get("nightly-echo").version == 2

    # Disabling clears next_run_at; enabling plans the next tick from now.
    disabled = put(client, "nightly-echo", {"enabled": False}).json
    assert disabled["enabled"] is False and disabled["next_run_at"] is None
    enabled = put(client, "nightly-echo", {"enabled": True}).json
    assert enabled["enabled"] is True and enabled["next_run_at"] is not None

    # A GET body sent back as is changes nothing (read-only fields are ignored).
    version = schedules.get("nightly-echo").version
    assert put(client, "nightly-echo", enabled).json == enabled
    assert schedules.get("nightly-echo").version == version


def test_put_validates_like_post(client: testing.TestClient) -> None:
    post(client, NIGHTLY)
    assert error_paths(put(client, "nightly-echo", {"cron": "bad"})) == ["/cron"]
    assert error_paths(put(client, "nightly-echo", {"cron": "0 2 * * *", "interval_s": 5})) == ["/interval_s"]
    assert error_paths(put(client, "nightly-echo", {"args": {"message": 1}})) == ["/args/message"]
    assert error_paths(put(client, "nightly-echo", {"id": "other"})) == ["/id"]
    assert error_paths(put(client, "nightly-echo", {"timezone": "Atlantis"})) == ["/timezone"]


def test_delete_answers_204_then_404(client: testing.TestClient, schedules: ScheduleStore) -> None:
    post(client, NIGHTLY)
    assert client.simulate_delete("/v1/schedules/nightly-echo", headers=AS_ADMIN).status_code == 204
    assert schedules.find("nightly-echo") is None
    assert client.simulate_get("/v1/schedules/nightly-echo").status_code == 404


def file_schedule() -> Schedule:
    return Schedule(id="from-file", task="diagnostics.echo", args={"message": "x"}, cron="*/5 * * * *",
                    interval_s=None, source=ScheduleSource.FILE)  # fmt: skip


def test_file_schedules_can_be_disabled_but_not_changed_or_deleted(
    client: testing.TestClient, schedules: ScheduleStore
) -> None:
    schedules.sync(ScheduleSource.FILE, [file_schedule()])
    resp = put(client, "from-file", {"enabled": False})
    assert resp.status_code == 200 and resp.json["enabled"] is False and resp.json["source"] == "file"
    resp = put(client, "from-file", {"cron": "*/10 * * * *"})
    assert resp.status_code == 409 and error_paths(resp) == ["/cron"]
    assert client.simulate_delete("/v1/schedules/from-file", headers=AS_ADMIN).status_code == 409
    assert schedules.get("from-file").cron == "*/5 * * * *"
    assert put(client, "from-file", {"enabled": True}).json["enabled"] is True


def test_builtin_schedules_are_read_only(client: testing.TestClient, schedules: ScheduleStore) -> None:
    schedules.sync(ScheduleSource.BUILTIN, builtin_schedules())
    assert client.simulate_get("/v1/schedules/maintenance.prune").json["source"] == "builtin"
    assert put(client, "maintenance.prune", {"enabled": False}).status_code == 409
    assert client.simulate_delete("/v1/schedules/maintenance.prune", headers=AS_ADMIN).status_code == 409
    assert schedules.get("maintenance.prune").enabled
