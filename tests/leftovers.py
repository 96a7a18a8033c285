"""The session-end check: no process a test started may outlive the test session.

Every process the tests start inherits ``JOBRELAY_TEST_SESSION`` from the pytest process (fixtures
pass ``os.environ`` on), and keeps it even when its parent dies and it is re-parented. At the end,
any live process still carrying this session's mark fails the run, named with its command line.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

MARK = "JOBRELAY_TEST_SESSION"


def mark_session() -> str:
    """This session's mark, set once in the environment every started process inherits."""
    return os.environ.setdefault(MARK, uuid.uuid4().hex)


def _state(pid: str) -> str:
    try:
        return (Path("/proc") / pid / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def marked_processes(mark: str) -> dict[int, str]:
    """Live processes (not this one, not zombies) whose environment carries ``MARK=mark``: pid -> command line."""
    needle = f"{MARK}={mark}".encode()
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if _state(entry.name) not in ("Z", "X"):
            found[int(entry.name)] = cmdline
    return found


def leftovers(mark: str, *, grace_s: float = 15.0) -> dict[int, str]:
    """The marked processes still alive after ``grace_s`` (stopping ones get that long to exit)."""
    deadline = time.monotonic() + grace_s
    while True:
        alive = marked_processes(mark)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)
