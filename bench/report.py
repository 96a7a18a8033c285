"""Where a benchmark writes (its section of benchmarks.md, raw JSON, a plot), and the facts every section starts with.

By default that is ``docs/benchmarks.md`` and ``docs/bench/``; ``--out DIR``
(or ``BENCH_OUT=DIR``) sends all of it to ``DIR/benchmarks.md`` and
``DIR/bench/`` instead, for trial runs that must not replace the published
figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Written by the scripts in `bench/` (`make bench`); each section says how it was measured.
Each script also saves its raw results and a plot in `docs/bench/` (`NAME.json`, `NAME.png`;
`python -m bench.plots` redraws the plots from the JSON).
"""
#: The start of the hand-written closing section's title: sections a script adds for the first time go before it.
ANALYSIS = "Where the time goes"
#: Packages named on every section's machine line.
PACKAGES = ("dramatiq", "redis", "SQLAlchemy", "falcon")


def percentile(values: list[float], q: float) -> float:
    """The value at fraction ``q`` (0 to 1) of ``values`` sorted (the last one for q = 1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def machine(*extra: str) -> str:
    """CPU, cores, Python, redis-server and package versions: the line every section carries."""
    cpu = "unknown CPU"
    cores = 0
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        cores = len(re.findall(r"^processor", cpuinfo, re.M))
        for line in cpuinfo.splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split(" ")[2:3]
    versions = ", ".join(f"{name} {_version(name)}" for name in (*PACKAGES, *extra))
    return (
        f"{cpu}, {cores} cores, Python {platform.python_version()}, "
        f"redis-server {redis_version[0] if redis_version else '?'}; {versions}"
    )


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def summary(values: list[float]) -> str:
    """Median and range: the figure the conclusions use, and how much it moved."""
    return f"{statistics.median(values):,.0f} (range {min(values):,.0f} to {max(values):,.0f})"


def met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def write_section(title: str, body: str, doc: Path = DOC) -> None:
    """Replace (or add) the ``## title`` section, leaving the other sections alone.

    A new section goes before the hand-written analysis (``ANALYSIS``) when the document has one.
    """
    doc.parent.mkdir(parents=True, exist_ok=True)
    text = doc.read_text() if doc.exists() else HEADER
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.M | re.S)
    analysis = re.compile(rf"^## {re.escape(ANALYSIS)}", re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    elif analysis.search(text):
        text = analysis.sub(lambda match: section + "\n" + match.group(0), text, count=1)
    else:
        text = text.rstrip() + "\n\n" + section
    doc.write_text(text)


def add_output_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("BENCH_OUT") or DOC.parent),
        help="folder for benchmarks.md and bench/ (JSON, PNG); default $BENCH_OUT or docs/",
    )


@dataclass(frozen=True)
class Output:
    """One output folder: ``benchmarks.md`` and, beside it, ``bench/NAME.json`` and ``bench/NAME.png``."""

    root: Path

    @property
    def doc(self) -> Path:
        return self.root / "benchmarks.md"

    @property
    def assets(self) -> Path:
        return self.root / "bench"

    def results_path(self, name: str) -> Path:
        return self.assets / f"{name}.json"

    def image_path(self, name: str) -> Path:
        return self.assets / f"{name}.png"

    def publish(self, name: str, results: dict[str, Any]) -> str:
        """Save the raw results and their plot; returns the markdown image link for the section.

        The JSON keeps everything the plot needs, so ``python -m bench.plots`` redraws it later.
        """
        from bench.plots import render  # matplotlib only where a plot is drawn

        self.assets.mkdir(parents=True, exist_ok=True)
        record = {"benchmark": name, "written_at": datetime.now(UTC).isoformat(timespec="seconds"), **results}
        self.results_path(name).write_text(json.dumps(record, indent=1) + "\n")
        render(name, record, self.image_path(name))
        return f"![{name}](bench/{name}.png)"

    def write_section(self, title: str, body: str) -> None:
        write_section(title, body, self.doc)
        print(f"{body.strip()}\n\n(written to the section {title!r} of {self.doc})", flush=True)
