"""The test mode needs no server: its tests pass with Redis and the database pointing at closed ports,
and with every network connection refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from shared.redis_server import free_port

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]

#: A pytest plugin that makes any INET socket connect or bind fail loudly.
NO_SOCKETS = """
import socket

def _refuse(self, *args, **kwargs):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        raise AssertionError(f"the test mode opened a network socket: {args!r}")
    return _real_connect(self, *args, **kwargs)

_real_connect = socket.socket.connect
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.socket.bind = _refuse
"""


def test_the_test_mode_passes_with_closed_ports_and_no_sockets(tmp_path: Path) -> None:
    (tmp_path / "no_sockets.py").write_text(NO_SOCKETS)
    env = {
        **os.environ,
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "DATABASE_URL": f"postgresql://jobrelay@127.0.0.1:{free_port()}/jobrelay",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT)]),
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no_sockets", "-p", "no:cacheprovider",
         str(HERE / "test_run.py"), str(HERE / "test_stack.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


def test_the_example_project_tests_pass_with_closed_ports_and_no_sockets(tmp_path: Path) -> None:
    # Given: the example project under examples/orders, its own pytest configuration and tests
    example = REPO_ROOT / "examples" / "orders"
    (tmp_path / "no_sockets.py").write_text(NO_SOCKETS)
    env = {
        **os.environ,
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "DATABASE_URL": f"postgresql://jobrelay@127.0.0.1:{free_port()}/jobrelay",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT)]),
    }
    # When: its tests run there, as ``make test`` runs them
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no_sockets", "-p", "no:cacheprovider"],
        cwd=example, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    # Then: they pass, with no server and no network socket
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "5 passed" in result.stdout
