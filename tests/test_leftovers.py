"""The session-end check finds a process a test left running, and only processes of this session."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.leftovers import MARK, leftovers, mark_session, marked_processes


def test_a_started_process_is_found_until_it_is_stopped() -> None:
    mark = mark_session()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert child.pid in marked_processes(mark)
    finally:
        child.terminate()
        child.wait(timeout=10)
    assert child.pid not in leftovers(mark, grace_s=1)


def test_a_process_of_another_session_is_not_counted() -> None:
    env = {**os.environ, MARK: "another-session"}
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    try:
        assert child.pid not in marked_processes(mark_session())
    finally:
        child.terminate()
        child.wait(timeout=10)


def test_nothing_in_the_project_ends_processes_by_name() -> None:
    root = Path(__file__).resolve().parents[1]
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    by_name = re.compile(r"\b(pkill|killall)\b")
    offenders = [
        path
        for path in tracked
        if path != "tests/test_leftovers.py"
        and (root / path).is_file()
        and by_name.search((root / path).read_text(errors="replace"))
    ]
    assert offenders == []
