"""What the CLI prints: tables and key/value blocks for people, JSON for scripts, a live progress line."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

BAR_WIDTH = 20


def cell(value: Any, width: int = 48) -> str:
    """One value as a table cell: scalars as text, the rest as compact JSON, cut to ``width``."""
    if value is None:
        text = "-"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, str | int | float):
        text = str(value)
    else:
        text = json.dumps(value, separators=(",", ":"), default=str)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Aligned columns with a header; ``(none)`` when there are no rows."""
    if not rows:
        return "(none)"
    cells = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    header = "  ".join(column.upper().ljust(width) for column, width in zip(columns, widths, strict=True))
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(line.rstrip() for line in [header, *lines])


def block(item: Mapping[str, Any]) -> str:
    """One object as ``key: value`` lines, keys aligned."""
    if not item:
        return "(empty)"
    width = max(len(key) for key in item)
    return "\n".join(f"{key.ljust(width)}  {cell(value, 100)}" for key, value in item.items())


def emit(value: Any, *, as_json: bool, out: TextIO, columns: Sequence[str] = ()) -> None:
    """``value`` as JSON (``--json``), else as a table (a list, with ``columns``) or a block (an object)."""
    if as_json:
        out.write(json.dumps(value, indent=2, default=str) + "\n")
    elif isinstance(value, list):
        out.write(table(value, columns) + "\n")
    elif isinstance(value, dict):
        out.write(block(value) + "\n")
    else:
        out.write(f"{cell(value, 10_000)}\n")


def render_progress(job: Mapping[str, Any], width: int = BAR_WIDTH) -> str:
    """``[#########-----------]  45%  sleeping  (running)`` for a job's ``progress`` and status."""
    status = str(job.get("status"))
    raw = job.get("progress")
    progress: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
    current, total = progress.get("current"), progress.get("total")
    if isinstance(current, int | float) and isinstance(total, int | float) and total > 0:
        fraction = min(max(current / total, 0.0), 1.0)
    else:
        fraction = 1.0 if status == "succeeded" else 0.0
    filled = int(fraction * width + 1e-9)
    line = f"[{'#' * filled}{'-' * (width - filled)}] {int(fraction * 100 + 1e-9):3d}%"
    # Task-supplied text: collapse whitespace so it cannot break the redrawn line.
    message = " ".join(str(progress.get("message") or "").split())[:60]
    if message:
        line += f"  {message}"
    return f"{line}  ({status})"


class ProgressView:
    """Redraw one line in place on a terminal; elsewhere print a line each time it changes."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.last = ""

    def update(self, job: Mapping[str, Any]) -> None:
        line = render_progress(job)
        if line == self.last:
            return
        self.out.write(f"\r{line}\x1b[K" if self.tty else f"{line}\n")
        self.out.flush()
        self.last = line

    def close(self) -> None:
        if self.tty and self.last:
            self.out.write("\n")
            self.out.flush()
