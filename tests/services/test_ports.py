"""``jobrelay up``'s port check: a taken default moves to a free port, a taken explicit address stops it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.ports import choose_ports
from shared.errors import SettingsError


@pytest.fixture
def taken() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_free_address_is_kept(taken: int) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    [choice] = choose_ports({"API_BIND": f"127.0.0.1:{free}"}, explicit=set())
    assert choice.bind == f"127.0.0.1:{free}" and choice.moved_from is None


def test_a_taken_default_moves_to_distinct_free_ports(taken: int) -> None:
    wanted = {"API_BIND": f"127.0.0.1:{taken}", "WORKER_METRICS_BIND": f"127.0.0.1:{taken}"}
    choices = choose_ports(wanted, explicit=set())
    ports = {int(choice.bind.rsplit(":", 1)[1]) for choice in choices}
    assert len(ports) == 2 and taken not in ports
    assert all(choice.moved_from == f"127.0.0.1:{taken}" for choice in choices)


def test_a_taken_explicit_address_names_its_variable(taken: int) -> None:
    with pytest.raises(SettingsError, match=f"API_BIND=127.0.0.1:{taken}: port {taken} is taken; set API_BIND"):
        choose_ports({"API_BIND": f"127.0.0.1:{taken}"}, explicit={"API_BIND"})


def test_jobrelay_up_stops_with_one_line_before_starting_anything(taken: int, tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "API_KEYS")},
        "DATA_DIR": str(tmp_path / "data"),
        "API_BIND": f"127.0.0.1:{taken}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "up"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"jobrelay up: API_BIND=127.0.0.1:{taken}: port {taken} is taken; set API_BIND to a free HOST:PORT"
    ]
    assert "jobrelay is up" not in done.stdout
    assert not (tmp_path / "data" / "redis").exists()
