"""The effects file ``reliability.effect`` writes and the audit reads: a SQLite file outside Redis and the store.

Kept apart from the task module so the test process can read it without
importing the tasks (which would add them to its own task catalog).

- ``executions``: one row per raw run (job id, attempt, pid, start and end
  times); a run killed mid-job has no end.
- ``effects``: the idempotent side effect, one row per job id.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

#: The environment variable naming the effects file (the task reads it when it runs).
EFFECTS_DB_ENV = "RELIABILITY_EFFECTS_DB"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS effects (job_id TEXT PRIMARY KEY, key TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS executions (
    job_id TEXT NOT NULL, key TEXT NOT NULL, attempt INTEGER NOT NULL, pid INTEGER NOT NULL,
    started REAL NOT NULL, ended REAL
);
CREATE INDEX IF NOT EXISTS executions_job ON executions (job_id);
"""


def connect(path: Path | str) -> sqlite3.Connection:
    """A connection to the effects file in autocommit mode, its tables made if missing."""
    conn = sqlite3.connect(str(path), timeout=60, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=60000")
    conn.executescript(_SCHEMA)
    return conn
