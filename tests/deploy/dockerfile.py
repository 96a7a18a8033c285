"""Reading deploy/Dockerfile: its stages, and what its builder stage copies and installs.

The install test (tests/deploy/test_install.py) replays the builder's steps outside a container;
``builder_plan`` is those steps, read from the file so the two cannot drift apart.
"""

from __future__ import annotations

import itertools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from tests.deploy.manifests import DEPLOY, REPO

DOCKERFILE = DEPLOY / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    result = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def stages() -> list[list[tuple[str, str]]]:
    """The instructions of each stage, ARG defaults substituted (global ARGs into FROM lines)."""
    found: list[list[tuple[str, str]]] = []
    global_args: dict[str, str] = {}
    stage_args: dict[str, str] = {}
    for keyword, rest in instructions():
        if keyword == "ARG":
            key, _, default = rest.partition("=")
            (stage_args if found else global_args)[key] = default
            if not found:
                continue
        if keyword == "FROM":
            found.append([])
            stage_args = {}
            rest = substitute(rest, global_args)
        found[-1].append((keyword, substitute(rest, stage_args)))
    return found


def env_pairs(rest: str) -> dict[str, str]:
    """The variables of one ``ENV a=1 b=2`` instruction."""
    pairs = {}
    for word in shlex.split(rest):
        key, sep, value = word.partition("=")
        assert sep, f"ENV {rest!r}: only the KEY=value form is read here"
        pairs[key] = value
    return pairs


@dataclass(frozen=True)
class BuilderPlan:
    """What the builder stage does to install the project, in the order it does it."""

    #: (source in the build context, destination relative to the WORKDIR), one per COPY source.
    copies: tuple[tuple[str, str], ...]
    #: The venv the builder creates (``python -m venv <path>``).
    venv: str
    #: The WORKDIR the copies land in and pip runs in.
    workdir: str
    #: The arguments of each ``pip ...`` command of its RUN lines, quotes removed.
    pip_commands: tuple[tuple[str, ...], ...]
    #: The variables its ENV lines set.
    env: dict[str, str]


def builder_plan() -> BuilderPlan:
    """The first stage's COPY, RUN (python -m venv, pip) and ENV steps."""
    builder = stages()[0]
    copies: list[tuple[str, str]] = []
    pip_commands: list[tuple[str, ...]] = []
    env: dict[str, str] = {}
    venv = workdir = ""
    for keyword, rest in builder:
        if keyword == "WORKDIR":
            workdir = rest
        elif keyword == "ENV":
            env.update(env_pairs(rest))
        elif keyword == "COPY":
            assert not rest.startswith("--"), f"COPY {rest}: the builder copies from the build context only"
            *sources, destination = shlex.split(rest)
            for source in (s.rstrip("/") for s in sources):
                # NOTE: Docker copies a directory's contents, not the directory, and a file into a
                # destination ending in "/" under its own name.
                into = destination.endswith("/") and not (REPO / source).is_dir()
                target = destination + source.rpartition("/")[2] if into else destination
                copies.append((source, target.removeprefix("./").rstrip("/") or "."))
        elif keyword == "RUN":
            for command in re.split(r"&&|;", rest):
                words = shlex.split(command)
                # Drop a redirection and what follows it (`jobrelay --help > /dev/null`).
                words = list(itertools.takewhile(lambda word: not re.match(r"^\d?>", word), words))
                program = Path(words[0]).name if words else ""
                if program.startswith("python") and words[1:3] == ["-m", "venv"]:
                    venv = words[3]
                elif program.startswith("python") and words[1:3] == ["-m", "pip"]:
                    pip_commands.append(tuple(words[3:]))
                elif program in ("pip", "pip3"):
                    pip_commands.append(tuple(words[1:]))
    return BuilderPlan(tuple(copies), venv, workdir, tuple(pip_commands), env)
