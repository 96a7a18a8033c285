"""The schedule repository: periodic jobs from schedules.toml, the API and the built-in housekeeping.

The store keeps what it is given; what a schedule means in time (its
triggers, its next tick) is the scheduler's business, which passes
``next_run_at`` in. Every change of a definition bumps ``version``, which the
scheduler leader polls to reload what changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.exc import IntegrityError

from shared.errors import Conflict, NotFound
from shared.job import rfc3339, utcnow
from shared.store.engine import write_transaction
from shared.store.models import schedules


class ScheduleSource(StrEnum):
    FILE = "file"  # schedules.toml, synced at scheduler boot; may be disabled over the API, not deleted
    API = "api"  # created over the API
    BUILTIN = "builtin"  # housekeeping, defined in code; read-only


class Misfire(StrEnum):
    COALESCE = "coalesce"  # ticks missed beyond the grace time become one catch-up run
    SKIP = "skip"  # ticks missed beyond the grace time are skipped (and counted)


#: Fields a schedules.toml entry or an API request defines.
DEFINITION_FIELDS = ("task", "args", "cron", "interval_s", "timezone", "enabled", "misfire", "misfire_grace_s")


@dataclass
class Schedule:
    """One schedule row."""

    id: str
    task: str
    cron: str | None
    interval_s: int | None
    args: dict[str, Any]
    timezone: str = "UTC"
    enabled: bool = True
    misfire: Misfire = Misfire.COALESCE
    misfire_grace_s: float = 60.0
    source: ScheduleSource = ScheduleSource.API
    next_run_at: datetime | None = None
    last_run_at: datetime | None = None
    version: int = 1
    file_hash: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    #: Tenants: the namespace of the key that created it (None: the operator's); its jobs carry it.
    #: A namespaced schedule's ``id`` is ``<namespace>:<id as its key gives it>``.
    namespace: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> Schedule:
        data = dict(row._mapping)
        data["misfire"] = Misfire(data["misfire"])
        data["source"] = ScheduleSource(data["source"])
        return cls(**data)

    @property
    def timing(self) -> tuple[str | None, int | None, str]:
        """What decides the ticks: two schedules with equal timing tick at the same instants."""
        return (self.cron, self.interval_s, self.timezone)

    def definition(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in DEFINITION_FIELDS}

    def fingerprint(self) -> str:
        """A hash of the definition, to tell whether a schedules.toml entry changed since the last sync."""
        canonical = json.dumps({"id": self.id, **self.definition()}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_api(self) -> dict[str, Any]:
        """The schedule as API.md shows it."""
        return {
            "id": self.id,
            "task": self.task,
            "args": self.args,
            "cron": self.cron,
            "interval_s": self.interval_s,
            "timezone": self.timezone,
            "enabled": self.enabled,
            "misfire": self.misfire.value,
            "misfire_grace_s": self.misfire_grace_s,
            "next_run_at": rfc3339(self.next_run_at),
            "last_run_at": rfc3339(self.last_run_at),
            "source": self.source.value,
            "namespace": self.namespace,
        }


@dataclass(frozen=True)
class SyncReport:
    created: list[str]
    updated: list[str]
    deleted: list[str]


_COLUMNS = [f.name for f in fields(Schedule)]


def _row_values(schedule: Schedule) -> dict[str, Any]:
    values = {name: getattr(schedule, name) for name in _COLUMNS}
    values["misfire"] = schedule.misfire.value
    values["source"] = schedule.source.value
    return values


class ScheduleStore:
    """Schedule rows in SQL. Every method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- reading ---------------------------------------------------------

    def find(self, schedule_id: str) -> Schedule | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(schedules).where(schedules.c.id == schedule_id)).first()
        return Schedule.from_row(row) if row is not None else None

    def get(self, schedule_id: str) -> Schedule:
        found = self.find(schedule_id)
        if found is None:
            raise NotFound(f"no schedule with id {schedule_id!r}")
        return found

    def all(self) -> list[Schedule]:
        """Every schedule, by id (the table holds tens or hundreds of rows, not millions)."""
        with self.engine.connect() as conn:
            return [Schedule.from_row(row) for row in conn.execute(select(schedules).order_by(schedules.c.id))]

    # -- the API's writes -------------------------------------------------

    def create(self, schedule: Schedule) -> Schedule:
        now = utcnow()
        created = replace(schedule, version=1, created_at=now, updated_at=now)
        try:
            with write_transaction(self.engine) as conn:
                if conn.execute(select(schedules.c.id).where(schedules.c.id == schedule.id)).first() is not None:
                    raise Conflict(f"a schedule with id {schedule.id!r} exists already")
                conn.execute(schedules.insert().values(**_row_values(created)))
        except IntegrityError:
            raise Conflict(f"a schedule with id {schedule.id!r} exists already") from None
        return created

    def replace(self, schedule: Schedule, *, expected_version: int) -> Schedule:
        """Store a new definition (and next_run_at) unless someone changed the row since it was read."""
        now = utcnow()
        values = schedule.definition()
        values.update(misfire=schedule.misfire.value, next_run_at=schedule.next_run_at, updated_at=now)
        with write_transaction(self.engine) as conn:
            done = conn.execute(
                update(schedules)
                .where(schedules.c.id == schedule.id, schedules.c.version == expected_version)
                .values(version=schedules.c.version + 1, **values)
            )
        if done.rowcount != 1:
            self.get(schedule.id)
            raise Conflict(f"schedule {schedule.id!r} changed while this request was handled; read it and retry")
        return self.get(schedule.id)

    def delete(self, schedule_id: str, *, source: ScheduleSource) -> bool:
        """Delete the schedule if it has this source; False when it exists with another."""
        with write_transaction(self.engine) as conn:
            done = conn.execute(
                delete(schedules).where(schedules.c.id == schedule_id, schedules.c.source == source.value)
            )
        if done.rowcount == 1:
            return True
        self.get(schedule_id)
        return False

    # -- the scheduler's writes ---------------------------------------------

    def sync(self, source: ScheduleSource, wanted: Sequence[Schedule]) -> SyncReport:
        """Make the schedules of ``source`` exactly ``wanted``: insert, update what changed, delete the rest.

        An entry counts as changed when its fingerprint differs from the one
        stored at the last sync; an unchanged entry keeps its row as it is,
        including an ``enabled`` toggled over the API. A changed entry keeps
        ``next_run_at`` when its timing is the same and it stays enabled, so
        a pending tick is not lost. An id held by another source is a
        ``Conflict``.
        """
        try:
            return self._sync(source, wanted)
        except IntegrityError:
            # Another replica booting at the same moment inserted the same rows first; now they are visible.
            return self._sync(source, wanted)

    def _sync(self, source: ScheduleSource, wanted: Sequence[Schedule]) -> SyncReport:
        now = utcnow()
        report = SyncReport(created=[], updated=[], deleted=[])
        with write_transaction(self.engine) as conn:
            existing = {s.id: s for s in map(Schedule.from_row, conn.execute(select(schedules)))}
            for schedule in wanted:
                fingerprint = schedule.fingerprint()
                found = existing.get(schedule.id)
                if found is not None and found.source != source:
                    raise Conflict(
                        f"schedule id {schedule.id!r} is taken by a schedule from {found.source.value!r}; "
                        "rename the entry or delete the other schedule"
                    )
                if found is None:
                    row = replace(
                        schedule,
                        source=source,
                        file_hash=fingerprint,
                        version=1,
                        created_at=now,
                        updated_at=now,
                        last_run_at=None,
                    )
                    conn.execute(schedules.insert().values(**_row_values(row)))
                    report.created.append(schedule.id)
                elif found.file_hash != fingerprint:
                    keep_next = found.timing == schedule.timing and found.enabled and schedule.enabled
                    values = schedule.definition()
                    values.update(
                        misfire=schedule.misfire.value,
                        file_hash=fingerprint,
                        next_run_at=found.next_run_at if keep_next else schedule.next_run_at,
                        updated_at=now,
                    )
                    conn.execute(
                        update(schedules)
                        .where(schedules.c.id == schedule.id)
                        .values(version=schedules.c.version + 1, **values)
                    )
                    report.updated.append(schedule.id)
            gone = sorted(s.id for s in existing.values() if s.source == source and s.id not in {w.id for w in wanted})
            if gone:
                conn.execute(delete(schedules).where(schedules.c.id.in_(gone)))
                report.deleted.extend(gone)
        return report

    def record_run(
        self, schedule_id: str, *, version: int, last_run_at: datetime | None, next_run_at: datetime | None
    ) -> bool:
        """Advance a schedule past the ticks just handled; False when its definition changed meanwhile.

        Both times only move forward, so an old leader finishing late cannot
        move them back.
        """
        conditions = [schedules.c.id == schedule_id, schedules.c.version == version]
        with write_transaction(self.engine) as conn:
            row = conn.execute(
                select(schedules.c.last_run_at, schedules.c.next_run_at).where(*conditions).with_for_update()
            ).first()
            if row is None:
                return False
            values: dict[str, Any] = {}
            if last_run_at is not None and (row.last_run_at is None or row.last_run_at < last_run_at):
                values["last_run_at"] = last_run_at
            if next_run_at is not None and (row.next_run_at is None or row.next_run_at < next_run_at):
                values["next_run_at"] = next_run_at
            if values:
                conn.execute(update(schedules).where(*conditions).values(**values))
        return True
