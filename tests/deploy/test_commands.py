"""What the containers run exists and accepts its arguments: every `jobrelay ...` command line of the
manifests, plus --help, exits 0 from the project's virtualenv; the worker's heartbeat probe works."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from services.worker.consumer_watch import CONSUMERS_DOWN_PREFIX
from shared.settings import Settings
from tests.deploy.manifests import REPO, Rendered, containers, venv_bin

HEARTBEAT_FILE = "worker-alive"


def command_lines(rendered_all: dict[str, Rendered]) -> set[tuple[str, ...]]:
    lines = set()
    for tree in rendered_all.values():
        for deployment in tree.jobrelay_deployments():
            for container in containers(deployment):
                lines.add((*container["command"], *container.get("args", [])))
    return lines


def test_container_commands_run(rendered_all: dict[str, Rendered]) -> None:
    lines = command_lines(rendered_all)
    services = {line[1] for line in lines if len(line) > 1}
    assert services == {"api", "scheduler", "worker"}, f"services in the manifests: {services}"

    def run(line: tuple[str, ...]) -> tuple[tuple[str, ...], subprocess.CompletedProcess[str]]:
        program = venv_bin(line[0])
        assert program.exists(), f"{line[0]} is not installed in {program.parent} (pip install -e .)"
        argv = [str(program), *line[1:], "--help"]
        return line, subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=REPO)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run, sorted(lines)))
    failed = [
        f"{' '.join(line)} --help -> {out.returncode}: {out.stderr.strip()}" for line, out in results if out.returncode
    ]
    assert not failed, "\n".join(failed)


def heartbeat_probes(rendered_all: dict[str, Rendered]) -> set[tuple[str, ...]]:
    probes = set()
    for tree in rendered_all.values():
        for worker in tree.workers():
            container = worker["spec"]["template"]["spec"]["containers"][0]
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert "exec" in container[kind], f"{tree.name}: {worker['metadata']['name']} {kind} is not exec"
                probes.add(tuple(container[kind]["exec"]["command"]))
    return probes


def test_heartbeat_file_is_what_the_worker_touches(rendered_all: dict[str, Rendered]) -> None:
    """The probe reads $DATA_DIR/worker-alive, the file services/worker/process.py gives the heartbeat."""
    source = (REPO / "services" / "worker" / "process.py").read_text()
    assert f'"{HEARTBEAT_FILE}"' in source, f"services/worker/process.py no longer names {HEARTBEAT_FILE!r}"
    for tree in rendered_all.values():
        data_dir = tree.config()["DATA_DIR"]
        for probe in heartbeat_probes({tree.name: tree}):
            assert f"'{data_dir}/{HEARTBEAT_FILE}'" in probe[-1], f"{tree.name}: probe {probe} misses DATA_DIR"
            # Several missed beats, not one slow one, make a worker dead.
            threshold = float(re.search(r"<\s*(\d+(?:\.\d+)?)", probe[-1]).group(1))  # type: ignore[union-attr]
            beat = Settings.from_env(tree.config()).worker_heartbeat_s
            assert threshold >= 5 * beat, f"{tree.name}: probe threshold {threshold}s vs heartbeat {beat}s"


def test_heartbeat_probe_behaves(rendered_all: dict[str, Rendered], tmp_path: Path) -> None:
    """Run the probe for real: fresh file -> 0, stale file -> 1, no file (still booting) -> not 0."""
    probes = heartbeat_probes(rendered_all)
    assert len(probes) == 1, f"the workers use different heartbeat probes: {probes}"
    program, *args = next(iter(probes))
    assert program == "python", f"probe runs {program!r}; the image has python on PATH"
    data_dir = next(iter(rendered_all.values())).config()["DATA_DIR"]
    script = args[-1].replace(data_dir, str(tmp_path))
    argv = [sys.executable, *args[:-1], script]
    alive = tmp_path / HEARTBEAT_FILE

    def probe() -> int:
        return subprocess.run(argv, capture_output=True, timeout=30).returncode

    assert probe() != 0, "no heartbeat file yet, but the probe passes"
    alive.touch()
    assert probe() == 0, "fresh heartbeat, but the probe fails"
    old = time.time() - 120
    os.utime(alive, (old, old))
    assert probe() == 1, "heartbeat two minutes old, but the probe passes"
    # A process with a consumer thread down makes the worker not ready (and, left so, not live)
    alive.touch()
    down = tmp_path / f"{CONSUMERS_DOWN_PREFIX}1234"
    down.write_text("default.DQ\n")
    assert probe() == 1, "a consumer is down, but the probe passes"
    # and the file a dead process left behind stops counting once it is old
    os.utime(down, (old, old))
    assert probe() == 0, "a consumers-down file two minutes old still fails the probe"
