"""The fatal-error report of a real process that segfaults in a task: the supervisor finds the task in it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

from services.worker.fault_report import crashing_stack, culprits, fault_report_path, task_locations

TASKS = """
import ctypes, os, threading, time
from shared.catalog import Catalog

catalog = Catalog()

@catalog.task(name="crashy.segfault")
def segfault() -> None:
    ctypes.string_at(0)

@catalog.task(name="crashy.sleepy")
def sleepy() -> None:
    time.sleep(30)

@catalog.task(name="crashy.abort")
def abort() -> None:
    os.abort()
"""

#: Runs in the child: tasks in two threads, the crashing one named on the command line.
CHILD = """
import sys, threading, time
from pathlib import Path
from services.worker.fault_report import enable
import crashy
report = enable(Path(sys.argv[1]))
threading.Thread(target=crashy.sleepy, daemon=True).start()
time.sleep(0.2)
crasher = threading.Thread(target=getattr(crashy, sys.argv[2]))
crasher.start()
crasher.join()
"""


def load(tmp_path: Path) -> ModuleType:
    (tmp_path / "crashy.py").write_text(TASKS)
    spec = importlib.util.spec_from_file_location("crashy", tmp_path / "crashy.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def crash(tmp_path: Path, function: str) -> tuple[Path, int]:
    path = fault_report_path(tmp_path / "data", "owner-1")
    repo = Path(__file__).resolve().parents[3]
    env_path = f"{tmp_path}:{repo}"
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(path), function],
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=60,
        check=False,
    )
    return path, done.returncode


def test_a_segfault_names_the_task_on_the_crashing_thread_only(tmp_path: Path) -> None:
    # Given a process running two tasks in two threads, When one of them segfaults
    module = load(tmp_path)
    path, code = crash(tmp_path, "segfault")
    assert code == -11
    # Then the report's crashing stack holds that task's function, and only that task is named
    locations = task_locations(module.catalog.definitions())
    assert culprits(path, locations) == {"crashy.segfault"}
    assert [function for _, function in crashing_stack(path.read_text())][:2] == ["string_at", "segfault"]


def test_an_abort_names_its_task(tmp_path: Path) -> None:
    module = load(tmp_path)
    path, code = crash(tmp_path, "abort")
    assert code == -6
    assert culprits(path, task_locations(module.catalog.definitions())) == {"crashy.abort"}


def test_no_report_or_no_task_on_the_stack_names_no_one(tmp_path: Path) -> None:
    module = load(tmp_path)
    locations = task_locations(module.catalog.definitions())
    assert culprits(tmp_path / "missing.fault", locations) == set()
    report = tmp_path / "other.fault"
    report.write_text(
        "Fatal Python error: Segmentation fault\n\n"
        "Current thread 0x00007f0000000001 (most recent call first):\n"
        '  File "/elsewhere/lib.py", line 3 in helper\n\n'
        "Thread 0x00007f0000000002 (most recent call first):\n"
        f'  File "{tmp_path / "crashy.py"}", line 12 in sleepy\n'
    )
    assert culprits(report, locations) == set()
