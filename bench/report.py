"""Writing one section of docs/benchmarks.md, and the facts every section starts with."""

from __future__ import annotations

import platform
import re
import statistics
import subprocess
from importlib import metadata
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nWritten by the scripts in `bench/` (`make bench`); each section says how it was measured.\n"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = (
        len(re.findall(r"^processor", Path("/proc/cpuinfo").read_text(), re.M)) if Path("/proc/cpuinfo").exists() else 0
    )
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split(" ")[2:3]
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in ("dramatiq", "redis", "SQLAlchemy", "falcon"))
    return (
        f"{cpu}, {cores} cores, Python {platform.python_version()}, "
        f"redis-server {redis_version[0] if redis_version else '?'}; {versions}"
    )


def summary(values: list[float]) -> str:
    """Median and range: the figure the conclusions use, and how much it moved."""
    return f"{statistics.median(values):,.0f} (range {min(values):,.0f} to {max(values):,.0f})"


def write_section(title: str, body: str) -> None:
    """Replace (or append) the ``## title`` section, leaving the other sections alone."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text() if DOC.exists() else HEADER
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    DOC.write_text(text)
