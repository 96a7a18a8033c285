"""The production install, outside a container: deploy/Dockerfile's builder steps replayed in a fresh venv
(the same files copied, the same pip commands, no extras), then each service booted from it to ready.

The development venv holds the test extra and more, so a dependency that arrives only through another
package (gunicorn's gevent worker imports ``packaging``, which gunicorn declares only in its own gevent
extra) hides there. Here, as in the image, nothing else is installed, and the API would not boot.

The image itself is not built here (no Docker daemon, and no registry to pull the base image from); the
first test checks that the Dockerfile still does only what this module replays, and
tests/deploy/test_tools.py lints it with hadolint.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import InvalidRequirement, Requirement

from shared.redis_server import free_ports
from tests.deploy.dockerfile import BuilderPlan, builder_plan, env_pairs, stages
from tests.deploy.manifests import REPO

# NOTE: the install (a resolve against PyPI, then wheels from pip's cache) is most of the time; the
# machine that runs it may be busy, so every bound is generous.
pytestmark = pytest.mark.timeout(900)

INSTALL_TIMEOUT_S = 480.0
BOOT_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0

#: Builder ENV variables that do not change what pip installs. The replay leaves out
#: PIP_NO_CACHE_DIR: pip's cache makes the install fast, and a cached wheel is the same wheel.
NEUTRAL_BUILDER_ENV = {"PATH", "PIP_DISABLE_PIP_VERSION_CHECK", "PIP_NO_CACHE_DIR"}
#: What the builder may upgrade before it installs the project; everything else comes from pyproject.toml.
INSTALLERS = {"pip", "setuptools", "wheel"}
#: pip options that do not change what gets installed.
NEUTRAL_PIP_OPTIONS = {"--upgrade", "-U", "--no-cache-dir", "--quiet", "-q", "--no-compile", "--progress-bar=off"}
#: What deploy/Dockerfile.dockerignore keeps out of the build context from inside the copied folders.
CONTEXT_IGNORED = ("__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache", ".ruff_cache")
API_KEY = "deploy-test:install-test-token:admin"


def test_dockerfile_installs_what_this_test_installs() -> None:
    """The builder copies files under their own names, then runs only `pip install .` (no extras, not
    editable, no requirements file) after upgrading pip, with no ENV that changes what pip picks."""
    plan = builder_plan()
    assert plan.venv and plan.workdir, f"the builder makes a venv and a WORKDIR: {plan}"
    assert plan.env.get("PATH", "").startswith(f"{plan.venv}/bin:"), "`pip` in the builder is the venv's pip"
    changing = sorted(set(plan.env) - NEUTRAL_BUILDER_ENV)
    assert not changing, f"builder ENV {changing} may change what pip installs; teach this test to replay it"
    for source, target in plan.copies:
        assert source == target, f"COPY {source} lands at {target}: this test copies each path under its own name"
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    *upgrades, project = plan.pip_commands
    assert project == ("install", "."), f"the last pip command is `pip install .`, not `pip {' '.join(project)}`"
    for command in upgrades:
        verb, *words = command
        options = [word for word in words if word.startswith("-")]
        targets = [word for word in words if not word.startswith("-")]
        assert verb == "install" and set(options) <= NEUTRAL_PIP_OPTIONS, f"`pip {' '.join(command)}`"
        for target in targets:
            try:
                name = Requirement(target).name
            except InvalidRequirement:
                name = target
            assert name in INSTALLERS, f"`pip {' '.join(command)}` installs {target!r} beside pyproject.toml"


@dataclass(frozen=True)
class Installed:
    venv: Path
    #: The final stage's ENV, with the image's paths replaced by this test's.
    env: dict[str, str]


def _copy_context(plan: BuilderPlan, src: Path) -> None:
    for source, target in plan.copies:
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, src / target, ignore=shutil.ignore_patterns(*CONTEXT_IGNORED))
        else:
            shutil.copy2(REPO / source, src / target)


def _run_logged(argv: list[str], *, cwd: Path, env: dict[str, str], log: Path, deadline: float) -> None:
    with log.open("ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        try:
            code = subprocess.run(
                argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=deadline - time.monotonic()
            ).returncode
        except subprocess.TimeoutExpired:
            pytest.fail(f"`{' '.join(argv)}` took too long:\n{log.read_text()[-4000:]}", pytrace=False)
    if code != 0:
        pytest.fail(f"`{' '.join(argv)}` exited {code}:\n{log.read_text()[-4000:]}", pytrace=False)


def _image_env(stage_env: dict[str, str], image_venv: str, venv: Path) -> dict[str, str]:
    """An ENV of the Dockerfile as this machine needs it: the venv and $PATH made this test's."""
    return {
        name: value.replace(image_venv, str(venv)).replace("$PATH", os.environ.get("PATH", "/usr/bin:/bin"))
        for name, value in stage_env.items()
    }


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The builder's steps: the copied paths alone in a build folder, `python -m venv`, its pip commands."""
    plan = builder_plan()
    root = tmp_path_factory.mktemp("install")
    src, venv, log = root / "src", root / "venv", root / "install.log"
    src.mkdir()
    _copy_context(plan, src)
    deadline = time.monotonic() + INSTALL_TIMEOUT_S
    # The pip configuration of this machine (index, certificates, find-links) stays; nothing of the
    # development venv or the repository may leak in.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_USER")}
    env.update(_image_env(plan.env, plan.venv, venv))
    env.pop("PIP_NO_CACHE_DIR", None)
    _run_logged([sys.executable, "-m", "venv", str(venv)], cwd=root, env=env, log=log, deadline=deadline)
    for command in plan.pip_commands:
        _run_logged([str(venv / "bin" / "python"), "-m", "pip", *command], cwd=src, env=env, log=log, deadline=deadline)

    final_env: dict[str, str] = {}
    for keyword, rest in stages()[-1]:
        if keyword == "ENV":
            final_env.update(env_pairs(rest))
    installed = Installed(venv=venv, env=_image_env(final_env, plan.venv, venv))
    # The services must import the installed copy, not the repository's.
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import services, shared, jobrelay; print(shared.__file__)"],
        cwd=root,
        env={**installed.env, "HOME": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(venv), f"shared imported from {where.stdout.strip()}"
    return installed


@dataclass(frozen=True)
class Service:
    argv: tuple[str, ...]
    #: Whether the service is ready, given its DATA_DIR and the binds of its settings.
    ready: Callable[[Path, dict[str, str]], bool]


def _http_ok(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bytes(response.read()) if response.status == 200 else None
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def _api_ready(data_dir: Path, env: dict[str, str]) -> bool:
    """The readiness probe of deploy/k8s: /readyz answers 200 once the store and Redis answer."""
    body = _http_ok(f"http://{env['API_BIND']}/readyz")
    return body is not None and json.loads(body)["status"] == "ready"


def _worker_ready(data_dir: Path, env: dict[str, str]) -> bool:
    """What the workers' probe reads: a heartbeat file, and no consumer thread down."""
    return (data_dir / "worker-alive").exists() and not list(data_dir.glob("consumers-down.*"))


def _scheduler_ready(data_dir: Path, env: dict[str, str]) -> bool:
    """The readiness probe of deploy/k8s: the metrics port answers (after migrations and the schedules' sync)."""
    return _http_ok(f"http://{env['SCHEDULER_METRICS_BIND']}/metrics") is not None


SERVICES = {
    "api": Service(("jobrelay", "api"), _api_ready),
    "worker": Service(("jobrelay", "worker"), _worker_ready),
    "scheduler": Service(("jobrelay", "scheduler"), _scheduler_ready),
}


@contextlib.contextmanager
def started(argv: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process in a session of its own, stopped by its PID when the block ends, however it ends."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                # NOTE: the session's ID is the PID started here; its group holds what it forked.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.mark.parametrize("name", list(SERVICES))
def test_service_boots_to_ready_from_the_production_install(
    name: str, installed: Installed, redis_url: str, tmp_path: Path
) -> None:
    # Given: the image's environment (its ENV, DATA_DIR as WORKDIR), a Redis and SQLite under DATA_DIR
    service = SERVICES[name]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    api_port, worker_port, scheduler_port = free_ports(3)
    env = {
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        **installed.env,
        "DATA_DIR": str(data_dir),
        "REDIS_URL": redis_url,
        "API_KEYS": API_KEY,
        "API_BIND": f"127.0.0.1:{api_port}",
        "API_WORKERS": "1",
        "WORKER_METRICS_BIND": f"127.0.0.1:{worker_port}",
        "WORKER_PROCESSES": "1",
        "WORKER_THREADS": "2",
        "SCHEDULER_METRICS_BIND": f"127.0.0.1:{scheduler_port}",
    }
    program = installed.venv / "bin" / service.argv[0]
    assert program.exists(), f"{service.argv[0]} is not in {program.parent}"
    log = tmp_path / f"{name}.log"

    # When: `jobrelay <service>` starts from the installed venv
    with started([str(program), *service.argv[1:]], env=env, cwd=data_dir, log=log) as process:
        # Then: it gets ready within the bound, and stops cleanly on SIGTERM
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while not service.ready(data_dir, env):
            if process.poll() is not None:
                pytest.fail(f"jobrelay {name} exited {process.returncode}:\n{log.read_text()[-4000:]}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(
                    f"jobrelay {name} not ready in {BOOT_TIMEOUT_S:g}s:\n{log.read_text()[-4000:]}", pytrace=False
                )
            time.sleep(0.2)
        if name == "api":
            # The console's templates and static files are package data: the install must carry them.
            login = _http_ok(f"http://{env['API_BIND']}/console/login")
            assert login is not None and b'name="key"' in login, "the console's login page did not render"
            assert _http_ok(f"http://{env['API_BIND']}/console/static/console.css"), "the console's CSS is missing"
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=STOP_TIMEOUT_S)
    assert code == 0, f"jobrelay {name} exited {code} on SIGTERM:\n{log.read_text()[-4000:]}"
