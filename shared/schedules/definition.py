"""Checking a schedule definition (an API body or a schedules.toml entry) and turning it into a ``Schedule``.

One checker for both sources, so the file and the API refuse the same
things with the same words; each problem is a ``FieldError`` at a JSON
pointer (``/cron``, ``/args/seconds``).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from shared.catalog import TaskSpec
from shared.errors import FieldError
from shared.job import utcnow
from shared.schedules.triggers import (
    MAX_INTERVAL_S,
    TimingError,
    build_trigger,
    first_tick_at_or_after,
    never_fires,
    zone,
)
from shared.store.schedules import DEFINITION_FIELDS, Misfire, Schedule, ScheduleSource
from shared.store.tasks import TaskRegistry
from shared.submission.validation import args_errors

SCHEDULE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: Ids of the built-in housekeeping schedules start with this; nobody else may use it.
BUILTIN_PREFIX = "maintenance."
#: Fields a GET returns that a PUT may send back unchanged; they are ignored.
READ_ONLY_FIELDS = frozenset({"next_run_at", "last_run_at", "source", "namespace"})
MAX_GRACE_S = float(MAX_INTERVAL_S)
NEVER_FIRES = "never fires: no date matches its day of month, month and day of week together (such as 30 February)"
DEFAULTS: dict[str, Any] = {
    "task": None,
    "args": {},
    "cron": None,
    "interval_s": None,
    "timezone": "UTC",
    "enabled": True,
    "misfire": Misfire.COALESCE.value,
    "misfire_grace_s": 60.0,
}


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def check_id(value: Any, pointer: str, errors: list[FieldError]) -> str | None:
    if not isinstance(value, str) or not SCHEDULE_ID.fullmatch(value):
        errors.append(
            FieldError(
                pointer, "is required: 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        )
        return None
    if value.startswith(BUILTIN_PREFIX):
        errors.append(FieldError(pointer, f"ids starting with {BUILTIN_PREFIX!r} are reserved for built-in schedules"))
        return None
    return value


def _merged(body: dict[str, Any], current: Schedule | None) -> dict[str, Any]:
    """The definition the body asks for: fields it leaves out keep their current (or default) value.

    Giving either of cron and interval_s replaces the timing, so switching
    from one to the other needs only the new one.
    """
    values = dict(current.definition()) if current is not None else dict(DEFAULTS)
    if current is not None:
        values["misfire"] = current.misfire.value
    if "cron" in body or "interval_s" in body:
        values["cron"] = body.get("cron")
        values["interval_s"] = body.get("interval_s")
    for name in DEFINITION_FIELDS:
        if name in body and name not in ("cron", "interval_s"):
            values[name] = body[name]
    return values


def _check_task(values: dict[str, Any], base: str, registry: TaskRegistry, errors: list[FieldError]) -> None:
    task = values["task"]
    spec: TaskSpec | None = None
    if not isinstance(task, str) or not task or len(task) > 200:
        errors.append(FieldError(f"{base}/task", "is required and must be a task name"))
    else:
        spec = registry.get(task)
        if spec is None:
            errors.append(FieldError(f"{base}/task", f"no worker has registered a task named {task!r}"))
    args = values["args"]
    if not isinstance(args, dict):
        errors.append(FieldError(f"{base}/args", "must be a JSON object"))
        return
    try:
        json.dumps(args, allow_nan=False)
    except (TypeError, ValueError):
        errors.append(FieldError(f"{base}/args", "must hold JSON values only (no dates, NaN or infinity)"))
        return
    if spec is not None:
        errors.extend(args_errors(spec, args, f"{base}/args"))


def _check_timing(values: dict[str, Any], body: dict[str, Any], base: str, errors: list[FieldError]) -> None:
    timezone, cron, interval = values["timezone"], values["cron"], values["interval_s"]
    zone_ok = False
    if not isinstance(timezone, str):
        errors.append(FieldError(f"{base}/timezone", "must be an IANA time zone name such as 'Europe/Berlin'"))
    else:
        try:
            zone(timezone)
            zone_ok = True
        except TimingError as exc:
            errors.append(FieldError(f"{base}/timezone", str(exc)))
    if cron is None and interval is None:
        errors.append(FieldError(f"{base}/cron", "give exactly one of cron and interval_s"))
    elif cron is not None and interval is not None:
        where = "/interval_s" if "interval_s" in body else "/cron"
        errors.append(FieldError(f"{base}{where}", "give either cron or interval_s, not both"))
    if cron is not None:
        if not isinstance(cron, str) or len(cron) > 200:
            errors.append(FieldError(f"{base}/cron", "must be a 5-field cron expression such as '0 2 * * *'"))
        else:
            try:
                # NOTE: checked in UTC when the zone is bad, so both problems are reported at once.
                if never_fires(cron, timezone if zone_ok else "UTC", utcnow()):
                    errors.append(FieldError(f"{base}/cron", NEVER_FIRES))
            except TimingError as exc:
                errors.append(FieldError(f"{base}/cron", str(exc)))
    if interval is not None:
        if isinstance(interval, float) and interval.is_integer():
            values["interval_s"] = interval = int(interval)
        if isinstance(interval, bool) or not isinstance(interval, int) or not 1 <= interval <= MAX_INTERVAL_S:
            errors.append(
                FieldError(f"{base}/interval_s", f"must be a whole number of seconds from 1 to {MAX_INTERVAL_S}")
            )


def _check_policy(values: dict[str, Any], base: str, errors: list[FieldError]) -> None:
    if not isinstance(values["enabled"], bool):
        errors.append(FieldError(f"{base}/enabled", "must be true or false"))
    if not isinstance(values["misfire"], str) or values["misfire"] not in {m.value for m in Misfire}:
        errors.append(FieldError(f"{base}/misfire", "must be 'coalesce' or 'skip'"))
    grace = values["misfire_grace_s"]
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not 1 <= grace <= MAX_GRACE_S:
        # NOTE: at least 1 s, so the few milliseconds any wake-up takes never count as a misfire.
        errors.append(FieldError(f"{base}/misfire_grace_s", f"must be a number of seconds from 1 to {MAX_GRACE_S:g}"))


def parse_schedule(
    body: Any,
    *,
    registry: TaskRegistry,
    errors: list[FieldError],
    base: str = "",
    current: Schedule | None = None,
    source: ScheduleSource = ScheduleSource.API,
    read_only_ok: bool = True,
) -> Schedule | None:
    """Check a definition; append each problem to ``errors`` and return the schedule if there is none.

    Without ``current`` the body creates a schedule and must name its ``id``;
    with it, the body changes ``current`` (fields left out keep their value).
    ``next_run_at`` is left as it was: the caller knows the clock.
    """
    before = len(errors)
    if not isinstance(body, dict):
        errors.append(FieldError(base or "/", "must be a JSON object"))
        return None
    allowed = {"id", *DEFINITION_FIELDS} | (READ_ONLY_FIELDS if read_only_ok else set())
    for unknown in sorted(set(body) - allowed):
        errors.append(FieldError(f"{base}/{_escape(str(unknown))}", "is not a field of a schedule"))
    if current is None:
        schedule_id = check_id(body.get("id"), f"{base}/id", errors)
    else:
        schedule_id = current.id
        if "id" in body and body["id"] != current.id:
            errors.append(FieldError(f"{base}/id", f"must be {current.id!r}, the id in the path, or left out"))
    values = _merged(body, current)
    _check_task(values, base, registry, errors)
    _check_timing(values, body, base, errors)
    _check_policy(values, base, errors)
    if len(errors) > before or schedule_id is None:
        return None
    return Schedule(
        id=schedule_id,
        task=values["task"],
        args=values["args"],
        cron=values["cron"].strip() if values["cron"] is not None else None,
        interval_s=values["interval_s"],
        timezone=values["timezone"],
        enabled=values["enabled"],
        misfire=Misfire(values["misfire"]),
        misfire_grace_s=float(values["misfire_grace_s"]),
        source=current.source if current is not None else source,
        next_run_at=current.next_run_at if current is not None else None,
        last_run_at=current.last_run_at if current is not None else None,
        version=current.version if current is not None else 1,
        file_hash=current.file_hash if current is not None else None,
        created_at=current.created_at if current is not None else None,
        updated_at=current.updated_at if current is not None else None,
        namespace=current.namespace if current is not None else None,
    )


def next_run_after_change(updated: Schedule, current: Schedule | None, now: datetime) -> datetime | None:
    """``next_run_at`` for a new or changed definition.

    Disabled: none. Same timing and enabled before: unchanged, so a tick due
    this very moment is not lost. Otherwise the first tick from now on
    (enabling never catches up the time a schedule was off).
    """
    if not updated.enabled:
        return None
    if current is not None and current.enabled and current.timing == updated.timing and current.next_run_at:
        return current.next_run_at
    return first_tick_at_or_after(build_trigger(updated.cron, updated.interval_s, updated.timezone), now)
