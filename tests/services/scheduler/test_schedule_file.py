"""schedules.toml: entries checked like API bodies, bad ones named by file and line, synced at boot."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine

from services.scheduler.schedule_file import ScheduleFileError, load_schedules, sync_file
from shared.store.schedules import Misfire, ScheduleSource, ScheduleStore
from shared.store.tasks import TaskRegistry

GOOD = """\
# nightly and frequent jobs
[[schedule]]
id = "nightly-echo"
task = "diagnostics.echo"
args = { message = "good night" }
cron = "0 2 * * *"
timezone = "Europe/Berlin"
misfire = "skip"
misfire_grace_s = 600

[[schedule]]
id = "every-minute"
task = "diagnostics.sleep"
interval_s = 60

[schedule.args]
seconds = 0.1
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "schedules.toml"
    path.write_text(text)
    return path


def test_a_good_file_loads_every_entry(tmp_path: Path, registry: TaskRegistry) -> None:
    loaded = [schedule for _entry, schedule in load_schedules(write(tmp_path, GOOD), registry)]
    assert [s.id for s in loaded] == ["nightly-echo", "every-minute"]
    nightly, minute = loaded
    assert nightly.cron == "0 2 * * *" and nightly.timezone == "Europe/Berlin"
    assert nightly.misfire is Misfire.SKIP and nightly.misfire_grace_s == 600
    assert nightly.source is ScheduleSource.FILE and nightly.next_run_at is not None
    assert minute.interval_s == 60 and minute.args == {"seconds": 0.1} and minute.misfire is Misfire.COALESCE


BAD_SECOND_ENTRY = """\
[[schedule]]
id = "fine"
task = "diagnostics.echo"
args = { message = "x" }
interval_s = 10

# the next one is wrong
[[schedule]]
id = "broken"
task = "diagnostics.echo"
args = { message = "x" }
cron = "0 25 * * *"
"""


#: Each bad file and what the error must say (besides the file's path).
BAD_FILES: list[tuple[str, str]] = [
    (BAD_SECOND_ENTRY, r"line 8 \(\[\[schedule\]\] #2\): cron: invalid cron expression"),
    ('[[schedule]]\nid = "a"\ntask = "diagnostics.echo"\nargs = {message = "x"}\n', "give exactly one of cron"),
    ('[[schedule]]\nid = "a"\ntask = "nope.nothing"\ninterval_s = 5\n', "line 1 .*task: no worker has registered"),
    ('[[schedule]]\nid = "a"\ntask = "diagnostics.echo"\ninterval_s = 5\n', "args/message: is required"),
    (
        '[[schedule]]\nid = "a"\ntask = "diagnostics.echo"\nargs = {message = "x"}\ncron = "* * * * *"\n'
        'timezone = "Berlin"\n',
        "timezone: 'Berlin' is not an IANA",
    ),
    (
        '[[schedule]]\nid = "a"\ntask = "diagnostics.echo"\nargs = {message = "x"}\ninterval_s = 5\n'
        'misfire = "later"\n',
        "misfire: must be 'coalesce' or 'skip'",
    ),
    (
        '[[schedule]]\nid = "a"\ntask = "diagnostics.echo"\nargs = {message = "x"}\ninterval_s = 5\nbogus = 1\n',
        "bogus: is not a field of a schedule",
    ),
    ('[[schedule]]\ntask = "diagnostics.echo"\nargs = {message = "x"}\ninterval_s = 5\n', "id: is required"),
    (
        '[[schedule]]\nid = "a"\ntask = "diagnostics.echo"\nargs = {message = "x"}\ninterval_s = 5\n'
        '\n[[schedule]]\nid = "a"\ntask = "diagnostics.echo"\nargs = {message = "x"}\ninterval_s = 6\n',
        r"line 7 .*id 'a' is used by an earlier entry",
    ),
    ("[[schedule]]\nid = 'a\n", "is not valid TOML"),
    ('[schedules]\nid = "a"\n', "unknown top-level key 'schedules'"),
]


def test_a_bad_entry_is_refused_naming_file_line_and_reason(tmp_path: Path, registry: TaskRegistry) -> None:
    for text, expected in BAD_FILES:
        path = write(tmp_path, text)
        with pytest.raises(ScheduleFileError, match=expected) as caught:
            load_schedules(path, registry)
        assert str(path) in caught.value.detail


def test_a_missing_file_is_refused(tmp_path: Path, registry: TaskRegistry) -> None:
    with pytest.raises(ScheduleFileError, match="cannot be read"):
        load_schedules(tmp_path / "absent.toml", registry)


def test_sync_upserts_and_deletes_file_schedules_and_leaves_a_bad_file_unsynced(
    tmp_path: Path, engine: Engine, registry: TaskRegistry
) -> None:
    schedules = ScheduleStore(engine)
    path = write(tmp_path, GOOD)
    report = sync_file(schedules, registry, path)
    assert sorted(report.created) == ["every-minute", "nightly-echo"]

    # Given the file loses one entry and the other changes
    path.write_text(GOOD.split('[[schedule]]\nid = "every-minute"')[0].replace("good night", "sleep well"))
    report = sync_file(schedules, registry, path)
    assert (report.updated, report.deleted) == (["nightly-echo"], ["every-minute"])
    assert schedules.get("nightly-echo").args == {"message": "sleep well"}

    # A bad file changes nothing.
    path.write_text(BAD_SECOND_ENTRY)
    with pytest.raises(ScheduleFileError):
        sync_file(schedules, registry, path)
    assert [s.id for s in schedules.all()] == ["nightly-echo"]

    # No file at all: no file schedules.
    assert sync_file(schedules, registry, None).deleted == ["nightly-echo"]


def test_an_entry_may_not_take_the_id_of_an_api_schedule(
    tmp_path: Path, engine: Engine, registry: TaskRegistry
) -> None:
    schedules = ScheduleStore(engine)
    path = write(tmp_path, GOOD)
    [(_entry, first), _] = load_schedules(path, registry)
    schedules.create(replace(first, source=ScheduleSource.API))
    with pytest.raises(ScheduleFileError, match=r"line 2 .*'nightly-echo' belongs to a schedule from 'api'"):
        sync_file(schedules, registry, path)
