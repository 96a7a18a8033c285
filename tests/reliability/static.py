"""Static security checks of ``shared/`` and ``services/``: bandit, and SQL built only through SQLAlchemy.

Every bandit finding must be explained in ``BANDIT_ACCEPTED`` (by rule and
file, not line, so unrelated edits do not churn it); the long form writes the
explanations into docs/reliability.md and the fast form checks they are there.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("shared", "services")

_SUBPROCESS = "launches a fixed argv list of our own (sys.executable, redis-server), never a shell or user input"
#: (bandit rule, file) -> why the finding is not a vulnerability here.
BANDIT_ACCEPTED: dict[tuple[str, str], str] = {
    (
        "B310",
        "services/up.py",
    ): "opens the stack's own /healthz at an http:// URL it built from API_BIND, never a user's URL",
    ("B403", "services/worker/isolation/child.py"): "imports pickle for the pipe between a worker thread and its own "
    "isolation child: both ends are this code in one pod, and the arguments were JSON-decoded before",
    ("B301", "services/worker/isolation/child.py"): "unpickles what its own worker thread sent over their private pipe",
    ("B101", "services/worker/isolation/pool.py"): "asserts narrow a type for mypy on invariants the code sets up",
    ("B101", "services/worker/middleware/results.py"): "an assert narrows a type for mypy on an invariant of Claims",
    (
        "B107",
        "shared/client/aio.py",
    ): "an empty token default means no Authorization header (API_AUTH=off), not a password",
    (
        "B107",
        "shared/client/base.py",
    ): "an empty token default means no Authorization header (API_AUTH=off), not a password",
    (
        "B107",
        "shared/client/sync.py",
    ): "an empty token default means no Authorization header (API_AUTH=off), not a password",
    ("B311", "shared/client/calls.py"): "random jitter of the client's retry backoff, not a secret",
    (
        "B104",
        "shared/client/calls.py",
    ): "maps a bind-all API_BIND (0.0.0.0) to 127.0.0.1 for the client's URL; binds nothing",
    (
        "B604",
        "shared/client/commands.py",
    ): "`shell=` is shtab's name of the shell to complete for; nothing runs a shell",
    ("B404", "services/up.py"): f"imports subprocess: `jobrelay up` {_SUBPROCESS}",
    ("B404", "services/worker/supervisor.py"): f"imports subprocess: the supervisor {_SUBPROCESS}",
    ("B404", "shared/processes.py"): f"imports subprocess: `spawn` {_SUBPROCESS}",
    ("B404", "shared/redis_server.py"): f"imports subprocess: the embedded Redis {_SUBPROCESS}",
    ("B603", "shared/processes.py"): "Popen with an argv list and no shell; every caller passes fixed arguments",
    ("B606", "services/api/main.py"): "os.execv of gunicorn with a fixed argv (settings are validated first)",
    ("B101", "services/scheduler/runner.py"): "assert narrows a type after an explicit check; no security decision",
    ("B101", "shared/schedules/triggers.py"): "assert narrows a type after an explicit check; no security decision",
    ("B101", "services/worker/middleware/claims.py"): "assert narrows a type (a claimed job has its row); not a guard",
}


@dataclass(frozen=True)
class Finding:
    rule: str
    path: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.rule} {self.path}:{self.line} {self.text}"


def bandit_findings() -> list[Finding]:
    """Run bandit (from this interpreter's environment) over shared/ and services/."""
    done = subprocess.run(
        [sys.executable, "-m", "bandit", "-r", *SCANNED, "-f", "json", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if "No module named bandit" in done.stderr:
        raise AssertionError("bandit is not installed: pip install 'bandit>=1.7' (part of the test extra)")
    report = json.loads(done.stdout)
    if report.get("errors"):
        raise AssertionError(f"bandit could not scan: {report['errors']}")
    return [
        Finding(r["test_id"], r["filename"].removeprefix("./"), r["line_number"], r["issue_text"])
        for r in report["results"]
    ]


def unexplained(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if (f.rule, f.path) not in BANDIT_ACCEPTED]


def bandit_section() -> str:
    """The table docs/reliability.md carries, one row per accepted finding."""
    rows = [f"| {rule} | `{path}` | {why} |" for (rule, path), why in sorted(BANDIT_ACCEPTED.items())]
    return "\n".join(["| rule | file | why it is accepted |", "| --- | --- | --- |", *rows])


# -- SQL only through SQLAlchemy ----------------------------------------------------------

#: Calls that take SQL text: SQLAlchemy's ``text()``, DBAPI and SQLAlchemy ``execute*``.
_SQL_CALLS = {"text", "execute", "executemany", "executescript", "exec_driver_sql"}


def _is_built_string(node: ast.expr) -> bool:
    """An f-string, ``%``-formatting, ``.format()`` or concatenation: SQL text built from values."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(part, ast.FormattedValue) for part in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
        return not (isinstance(node.left, ast.Constant) and isinstance(node.right, ast.Constant))
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format"


def string_built_sql(roots: tuple[str, ...] = SCANNED) -> list[str]:
    """Every call passing SQL text built from values (rather than bound parameters) under ``roots``."""
    found = []
    for root in roots:
        for path in sorted((REPO / root).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call) or not node.args:
                    continue
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
                if name in _SQL_CALLS and _is_built_string(node.args[0]):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)[:120]}")
    return found
