"""Which task killed its process: the report Python writes as a fatal signal ends it, read by the supervisor.

A worker process enables ``faulthandler`` on a file of its own (``fault_report_path``). When
a fatal signal (SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL) ends it, Python writes every thread's
stack there, the thread that took the signal marked ``Current thread``. The supervisor reads it
(``crashes.py``): the task functions on that thread's stack name the task that killed the
process, and only the attempts of that task count; the jobs running beside it go back to their
queue uncounted. A death that leaves no report (SIGKILL, ``os._exit``, the OOM killer), or one
whose stack holds no task function, names no one, and every attempt the process was inside counts.
"""

from __future__ import annotations

import faulthandler
import inspect
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from shared.catalog import TaskDefinition

log = logging.getLogger(__name__)

_CURRENT_THREAD = re.compile(r"^Current thread 0x[0-9a-f]+ \(most recent call first\):$")
_FRAME = re.compile(r'^  File "(?P<file>.+)", line \d+ in (?P<function>.+)$')

#: A code location: (file name, function name), as the report prints it.
Location = tuple[str, str]


def fault_report_path(data_dir: Path, owner: str) -> Path:
    """Where the worker process ``owner`` has Python write its report (beside its held-jobs file)."""
    return data_dir / "held-jobs" / f"{owner}.fault"


def enable(path: Path) -> IO[str] | None:
    """Have Python write this process's fatal-error report to ``path``; the open file (keep it) or None.

    NOTE: the file must stay open for the life of the process: faulthandler writes to its
    descriptor from the signal handler, where nothing can be opened.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        report = path.open("w")
    except OSError as exc:
        log.warning("no fatal-error report for this process (%s): a crash will count every running job", exc)
        return None
    faulthandler.enable(file=report, all_threads=True)
    return report


def crashing_stack(text: str) -> list[Location]:
    """The frames of the thread that took the fatal signal, most recent first; empty when the report has none."""
    frames: list[Location] = []
    inside = False
    for line in text.splitlines():
        if _CURRENT_THREAD.match(line):
            inside = True
            continue
        if not inside:
            continue
        frame = _FRAME.match(line)
        if frame is None:
            break
        frames.append((frame["file"], frame["function"]))
    return frames


def task_locations(definitions: Iterable[TaskDefinition]) -> dict[Location, str]:
    """Where each task's own function lives, as a report would print it: location -> task name."""
    locations: dict[Location, str] = {}
    for definition in definitions:
        fn = inspect.unwrap(definition.fn)
        code = getattr(fn, "__code__", None)
        if code is not None:
            locations[(code.co_filename, code.co_name)] = definition.spec.name
    return locations


def culprits(path: Path, locations: dict[Location, str]) -> set[str]:
    """The tasks on the crashing thread's stack in the report at ``path``; empty when it names none."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return set()
    return {locations[frame] for frame in crashing_stack(text) if frame in locations}
