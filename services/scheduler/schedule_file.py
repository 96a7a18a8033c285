"""``schedules.toml``: the declarative schedules, read and synced into the store at scheduler boot.

```toml
[[schedule]]
id = "nightly-report"
task = "reports.generate"
args = { report = "daily" }
cron = "0 2 * * *"
timezone = "Europe/Berlin"
```

Entries are checked exactly as the API checks a POST body. A bad entry
stops the scheduler with an error naming the file, the line of its
``[[schedule]]`` header and the reason; nothing is synced then, so a typo
never deletes the schedules that were there.
"""

from __future__ import annotations

import logging
import re
import time
import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from shared.errors import Conflict, FieldError, JobrelayError
from shared.job import utcnow
from shared.schedules.definition import parse_schedule
from shared.schedules.triggers import build_trigger, first_tick_at_or_after
from shared.store.schedules import Schedule, ScheduleSource, ScheduleStore, SyncReport
from shared.store.tasks import TaskRegistry

log = logging.getLogger(__name__)

_HEADER = re.compile(r"^\s*\[\[\s*schedule\s*\]\]\s*(#.*)?$")


class ScheduleFileError(JobrelayError):
    """schedules.toml cannot be used; the message names the file, the line and the reason."""

    title = "Invalid schedules file"


@dataclass(frozen=True)
class FileEntry:
    index: int  # 1-based position among the entries
    line: int | None  # line of its [[schedule]] header
    body: dict[str, Any]

    def where(self, path: Path) -> str:
        at = f"line {self.line}" if self.line is not None else f"entry {self.index}"
        return f"{path}, {at} ([[schedule]] #{self.index})"


def read_entries(path: Path) -> list[FileEntry]:
    """The ``[[schedule]]`` entries of the file with the line of each header."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScheduleFileError(f"SCHEDULES_FILE {path}: cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ScheduleFileError(f"{path}: is not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScheduleFileError(f"{path}: is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"schedule"})
    if unknown:
        raise ScheduleFileError(f"{path}: unknown top-level key {unknown[0]!r}; each entry is a [[schedule]] table")
    entries = data.get("schedule", [])
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise ScheduleFileError(f"{path}: 'schedule' must be an array of tables, written [[schedule]]")
    headers = [number for number, line in enumerate(text.splitlines(), start=1) if _HEADER.match(line)]
    # NOTE: tomllib keeps no positions; headers are found in the text, and when the file uses another
    # spelling (an inline array) the count differs and errors name the entry's position instead.
    lines: list[int | None] = list(headers) if len(headers) == len(entries) else [None] * len(entries)
    return [FileEntry(i + 1, lines[i], entry) for i, entry in enumerate(entries)]


def _wait_for_tasks(entries: list[FileEntry], registry: TaskRegistry, wait_s: float) -> None:
    """Give the workers up to ``wait_s`` to register the tasks the file names (they may boot together)."""
    deadline = time.monotonic() + wait_s
    while True:
        missing = sorted({e.body["task"] for e in entries if isinstance(e.body.get("task"), str)} - set(registry.all()))
        if not missing or time.monotonic() >= deadline:
            return
        log.info("waiting for a worker to register task(s) %s named in the schedules file", ", ".join(missing))
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def load_schedules(
    path: Path, registry: TaskRegistry, *, now: datetime | None = None, task_wait_s: float = 0.0
) -> list[tuple[FileEntry, Schedule]]:
    """Every entry of the file with its checked schedule, or ``ScheduleFileError`` for the first bad one."""
    entries = read_entries(path)
    if task_wait_s > 0:
        _wait_for_tasks(entries, registry, task_wait_s)
    moment = now or utcnow()
    found: list[tuple[FileEntry, Schedule]] = []
    seen: dict[str, FileEntry] = {}
    for entry in entries:
        errors: list[FieldError] = []
        schedule = parse_schedule(
            entry.body, registry=registry, errors=errors, source=ScheduleSource.FILE, read_only_ok=False
        )
        if schedule is None:
            reasons = "; ".join(f"{e.path.lstrip('/') or 'entry'}: {e.message}" for e in errors)
            raise ScheduleFileError(f"{entry.where(path)}: {reasons}")
        if schedule.id in seen:
            raise ScheduleFileError(f"{entry.where(path)}: id {schedule.id!r} is used by an earlier entry as well")
        seen[schedule.id] = entry
        if schedule.enabled:
            trigger = build_trigger(schedule.cron, schedule.interval_s, schedule.timezone)
            schedule.next_run_at = first_tick_at_or_after(trigger, moment)
        found.append((entry, schedule))
    return found


def sync_file(
    store: ScheduleStore, registry: TaskRegistry, path: Path | None, *, task_wait_s: float = 0.0
) -> SyncReport:
    """Make the store's file schedules match the file (no file: none); refuse the whole file if one entry is bad."""
    loaded = load_schedules(path, registry, task_wait_s=task_wait_s) if path is not None else []
    others = {s.id: s.source for s in store.all() if s.source != ScheduleSource.FILE}
    for entry, schedule in loaded:
        if schedule.id in others and path is not None:
            raise ScheduleFileError(
                f"{entry.where(path)}: id {schedule.id!r} belongs to a schedule from {others[schedule.id].value!r} "
                "(created over the API); rename the entry or delete that schedule"
            )
    try:
        report = store.sync(ScheduleSource.FILE, [schedule for _entry, schedule in loaded])
    except Conflict as exc:
        # Another source took the id between the check and the sync.
        raise ScheduleFileError(f"{path}: {exc.detail}") from None
    if report.created or report.updated or report.deleted:
        log.info(
            "schedules file %s synced: created %s, updated %s, deleted %s",
            path or "(none set)",
            report.created or "none",
            report.updated or "none",
            report.deleted or "none",
        )
    return report
