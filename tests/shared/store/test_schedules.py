"""The schedule repository on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from shared.errors import Conflict, NotFound
from shared.store.schedules import Misfire, Schedule, ScheduleSource, ScheduleStore

T0 = datetime(2024, 6, 1, 12, tzinfo=UTC)


def make_schedule(schedule_id: str = "nightly", **overrides: object) -> Schedule:
    values: dict[str, object] = {
        "id": schedule_id,
        "task": "diagnostics.echo",
        "args": {"message": "hi"},
        "cron": "0 2 * * *",
        "interval_s": None,
        "next_run_at": T0,
    }
    values.update(overrides)
    return Schedule(**values)  # type: ignore[arg-type]


@pytest.fixture
def schedules(engine: Engine) -> ScheduleStore:
    return ScheduleStore(engine)


def test_create_get_and_list(schedules: ScheduleStore) -> None:
    created = schedules.create(make_schedule(timezone="Europe/Berlin", misfire=Misfire.SKIP, misfire_grace_s=5))
    schedules.create(make_schedule("another", cron=None, interval_s=30))
    loaded = schedules.get("nightly")
    assert loaded == created
    assert loaded.version == 1 and loaded.misfire is Misfire.SKIP and loaded.source is ScheduleSource.API
    assert loaded.next_run_at == T0 and loaded.timezone == "Europe/Berlin"
    assert [s.id for s in schedules.all()] == ["another", "nightly"]
    assert loaded.to_api() == {
        "id": "nightly",
        "task": "diagnostics.echo",
        "args": {"message": "hi"},
        "cron": "0 2 * * *",
        "interval_s": None,
        "timezone": "Europe/Berlin",
        "enabled": True,
        "misfire": "skip",
        "misfire_grace_s": 5,
        "next_run_at": "2024-06-01T12:00:00.000Z",
        "last_run_at": None,
        "source": "api",
        "namespace": None,
    }


def test_create_twice_conflicts_and_unknown_is_not_found(schedules: ScheduleStore) -> None:
    schedules.create(make_schedule())
    with pytest.raises(Conflict):
        schedules.create(make_schedule())
    with pytest.raises(NotFound):
        schedules.get("nope")
    assert schedules.find("nope") is None


def test_replace_bumps_the_version_and_refuses_a_stale_one(schedules: ScheduleStore) -> None:
    schedules.create(make_schedule())
    changed = schedules.replace(make_schedule(cron=None, interval_s=5, enabled=False), expected_version=1)
    assert changed.version == 2 and changed.interval_s == 5 and changed.cron is None and not changed.enabled
    with pytest.raises(Conflict):
        schedules.replace(make_schedule(), expected_version=1)
    with pytest.raises(NotFound):
        schedules.replace(make_schedule("nope"), expected_version=1)


def test_delete_only_with_the_right_source(schedules: ScheduleStore) -> None:
    schedules.sync(ScheduleSource.FILE, [make_schedule("from-file")])
    schedules.create(make_schedule("from-api"))
    assert not schedules.delete("from-file", source=ScheduleSource.API)
    assert schedules.delete("from-api", source=ScheduleSource.API)
    assert [s.id for s in schedules.all()] == ["from-file"]
    with pytest.raises(NotFound):
        schedules.delete("from-api", source=ScheduleSource.API)


def test_sync_creates_updates_and_deletes_only_its_own_source(schedules: ScheduleStore) -> None:
    schedules.create(make_schedule("api-made"))
    first = schedules.sync(ScheduleSource.FILE, [make_schedule("a"), make_schedule("b")])
    assert (first.created, first.updated, first.deleted) == (["a", "b"], [], [])
    assert schedules.get("a").source is ScheduleSource.FILE and schedules.get("a").file_hash

    # Unchanged entries are left alone: no version bump.
    again = schedules.sync(ScheduleSource.FILE, [make_schedule("a"), make_schedule("b")])
    assert (again.created, again.updated, again.deleted) == ([], [], [])
    assert schedules.get("a").version == 1

    # b changes, a goes away, c is new; the API schedule is untouched.
    later = T0 + timedelta(hours=1)
    report = schedules.sync(
        ScheduleSource.FILE, [make_schedule("b", args={"message": "new"}, next_run_at=later), make_schedule("c")]
    )
    assert (report.created, report.updated, report.deleted) == (["c"], ["b"], ["a"])
    b = schedules.get("b")
    assert b.args == {"message": "new"} and b.version == 2
    assert b.next_run_at == T0  # same timing, still enabled: the pending tick is kept
    assert {s.id for s in schedules.all()} == {"api-made", "b", "c"}


def test_sync_recomputes_next_run_when_the_timing_changes(schedules: ScheduleStore) -> None:
    schedules.sync(ScheduleSource.FILE, [make_schedule("a")])
    later = T0 + timedelta(hours=5)
    schedules.sync(ScheduleSource.FILE, [make_schedule("a", cron="0 3 * * *", next_run_at=later)])
    assert schedules.get("a").next_run_at == later


def test_an_api_toggle_of_enabled_survives_a_sync_of_the_unchanged_file(schedules: ScheduleStore) -> None:
    schedules.sync(ScheduleSource.FILE, [make_schedule("a")])
    current = schedules.get("a")
    schedules.replace(replace(current, enabled=False, next_run_at=None), expected_version=current.version)
    schedules.sync(ScheduleSource.FILE, [make_schedule("a")])
    assert not schedules.get("a").enabled
    # A changed entry wins again.
    schedules.sync(ScheduleSource.FILE, [make_schedule("a", args={"message": "v2"})])
    assert schedules.get("a").enabled


def test_sync_refuses_an_id_of_another_source(schedules: ScheduleStore) -> None:
    schedules.create(make_schedule("taken"))
    with pytest.raises(Conflict, match="taken"):
        schedules.sync(ScheduleSource.FILE, [make_schedule("taken")])
    assert schedules.get("taken").source is ScheduleSource.API


def test_record_run_moves_forward_only_and_not_across_a_definition_change(schedules: ScheduleStore) -> None:
    schedules.create(make_schedule())
    assert schedules.record_run("nightly", version=1, last_run_at=T0, next_run_at=T0 + timedelta(days=1))
    # An old leader finishing late cannot move the times back.
    assert schedules.record_run("nightly", version=1, last_run_at=T0 - timedelta(days=1), next_run_at=T0)
    stored = schedules.get("nightly")
    assert stored.last_run_at == T0 and stored.next_run_at == T0 + timedelta(days=1)
    schedules.replace(make_schedule(cron="0 3 * * *", next_run_at=T0 + timedelta(hours=15)), expected_version=1)
    assert not schedules.record_run("nightly", version=1, last_run_at=T0 + timedelta(days=1), next_run_at=None)
    assert schedules.get("nightly").next_run_at == T0 + timedelta(hours=15)
