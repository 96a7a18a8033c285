"""Metric files on a full disk: an OSError kept and counted, never a SIGBUS.

Each case runs in a child process: the failure this guards against kills the process.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.disk import CannotMount, small_tmpfs

#: The child: series written before the disk is full, then new series past the file's first
#: 16 KiB while it is full, then the disk freed and the same series written again.
CHILD = """
import json, os, sys
from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess
from shared import metric_files
from tests.disk import Filler

if sys.argv[1] == "reserved":
    metric_files.reserve_file_space()
    metric_files.RETRY_S = 0.0
directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
requests = Counter("t_requests", "requests", ["route"])
latency = Histogram("t_latency", "latency", ["route"])
requests.labels("before").inc()
filler = Filler(__import__("pathlib").Path(directory))
filler.fill()
for i in range(200):
    requests.labels(f"/while-full/{i:03d}").inc(2)
for i in range(40):
    latency.labels(f"/while-full/{i:03d}").observe(0.1)
print("survived", flush=True)
filler.free()
requests.labels("/while-full/007").inc()
latency.labels("/while-full/005").observe(0.2)
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
print(json.dumps({
    "before": registry.get_sample_value("t_requests_total", {"route": "before"}),
    "kept": requests.labels("/while-full/005")._value.get(),
    "saved_later": registry.get_sample_value("t_requests_total", {"route": "/while-full/007"}),
    "file_made_later": registry.get_sample_value("t_latency_count", {"route": "/while-full/005"}),
    "unsaved": registry.get_sample_value("jobrelay_metrics_unsaved_series_total"),
    "half_made": sorted(name for name in os.listdir(directory) if not name.endswith(".db")),
}))
"""


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Iterator[Path]:
    try:
        with small_tmpfs(tmp_path / "metrics", size="256k") as path:
            yield path
    except CannotMount as exc:
        pytest.skip(str(exc))


def run_child(metrics_dir: Path, mode: str) -> subprocess.CompletedProcess[str]:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), mode], env=env, capture_output=True, text=True, timeout=60
    )


def test_prometheus_client_alone_dies_of_sigbus_on_a_full_disk(metrics_dir: Path) -> None:
    """What the reserved files are for: prometheus_client writes into sparse pages of its map."""
    done = run_child(metrics_dir, "stock")
    assert done.returncode == -signal.SIGBUS, done.stderr[-2000:]


def test_a_full_disk_keeps_new_series_in_memory_counts_them_and_saves_them_once_there_is_space(
    metrics_dir: Path,
) -> None:
    # Given reserved files, when new series are written on a full disk and later with space again
    done = run_child(metrics_dir, "reserved")
    # Then the process lived, and nothing was lost from memory
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "survived"
    found = json.loads(lines[-1])
    assert found["before"] == 1.0
    assert found["kept"] == 2.0
    # A kept series took its place in the file once the disk had space, with its whole count
    assert found["saved_later"] == 3.0
    # A file that could not be made at all was made once there was room, with what it held
    assert found["file_made_later"] == 2.0
    # Each series that got no space was counted where a scrape sees it
    assert found["unsaved"] is not None and found["unsaved"] > 0
    # No file was left half made (a scrape would fail on it)
    assert found["half_made"] == []
