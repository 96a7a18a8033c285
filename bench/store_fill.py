"""A PostgreSQL jobs table of any size, filled in one statement, for the scale benchmark and the plan tests.

One ``INSERT ... SELECT FROM generate_series``; row ``n`` of ``total`` is a job made
``(total - n) * span_s / total`` seconds ago, so the ids (UUIDv7 built from that time,
``n`` in the random bits) are time-ordered as the API makes them. The mix, by ``n``:

- 7 tasks on 4 queues, a task always on its own queue (as the catalog has it): tasks are
  ``n % 7``, so ``default`` holds 3 of 7 jobs, ``emails`` and ``webhooks`` 1 of 7 each,
  ``reports`` 2 of 7;
- final states over every task and queue (the status follows ``(n / 7) % 1000``, which is
  independent of the task): 96.5% succeeded, 2% failed of which 1.5 points are dead
  letters, 1% cancelled, 0.5% expired;
- the newest ``live`` rows (2,000, at most 1% of the table) wait or run: 1 in 10 running,
  1 in 10 scheduled (due in the next hour), 1 in 20 retrying, the rest queued;
- one workflow row per 100 jobs (the newest 20 running);
- 3 tenants' namespaces on a third of the jobs (the rest have none), 1 job in 200 made by a
  schedule, 1 in 20 a step of a 5-step workflow, 1 in 50 with an idempotency key;
- arguments, results and errors of the sizes the diagnostics tasks make.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text

from shared.store.engine import create_store_engine, migrate

DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

TASKS = [
    ("diagnostics.echo", "default"),
    ("diagnostics.sleep", "default"),
    ("emails.send", "emails"),
    ("webhooks.deliver", "webhooks"),
    ("reports.generate", "reports"),
    ("reports.export", "reports"),
    ("diagnostics.fail", "default"),
]
NAMESPACES = ["acme", "globex", "initech"]

# NOTE: the arrays below are TASKS and NAMESPACES written out.
FILL = """
INSERT INTO jobs (id, task, queue, status, args, priority, max_retries, attempts, result, error,
                  created_at, scheduled_for, started_at, finished_at, next_attempt_at, updated_at,
                  workflow_id, schedule_id, idempotency_key, published_at, lease_owner, lease_expires_at,
                  cancel_requested, dead, held, namespace, submitted_by)
SELECT
  substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-7' || lpad(to_hex(n % 4096), 3, '0') || '-8'
    || lpad(to_hex((n / 4096) % 4096), 3, '0') || '-' || lpad(to_hex(n), 12, '0'),
  (ARRAY['diagnostics.echo', 'diagnostics.sleep', 'emails.send', 'webhooks.deliver', 'reports.generate',
         'reports.export', 'diagnostics.fail'])[1 + n % 7],
  (ARRAY['default', 'default', 'emails', 'webhooks', 'reports', 'reports', 'default'])[1 + n % 7],
  s.status,
  json_build_object('message', 'm' || n, 'to', 'user' || (n % 5000) || '@example.org'),
  0, 3, CASE WHEN s.status IN ('queued', 'scheduled') THEN 0 ELSE 1 END,
  CASE WHEN s.status = 'succeeded' THEN to_json('ok'::text) END,
  CASE WHEN s.status IN ('failed', 'retrying', 'expired') THEN json_build_object(
    'type', (ARRAY['ValueError', 'TimeoutError', 'SMTPError'])[1 + n % 3], 'message', 'failed ' || n,
    'retryable', s.status = 'retrying') END,
  t,
  CASE WHEN s.status = 'scheduled' THEN now() + (n % 3600) * interval '1 second' END,
  CASE WHEN s.status NOT IN ('queued', 'scheduled', 'cancelled', 'expired') THEN t + interval '5 ms' END,
  CASE WHEN s.status IN ('succeeded', 'failed', 'cancelled', 'expired') THEN t + (n % 900) * interval '1 ms' END,
  CASE WHEN s.status = 'retrying' THEN now() + interval '30 seconds' END,
  t,
  CASE WHEN n % 100 < 5 THEN '0190c000-0000-7000-8000-' || lpad(to_hex(n / 100), 12, '0') END,
  CASE WHEN n % 200 = 11 THEN 'nightly-report' END,
  CASE WHEN n % 50 = 0 THEN 'key-' || n END,
  t,
  CASE WHEN s.status = 'running' THEN 'worker-' || (n % 4) END,
  CASE WHEN s.status = 'running' THEN now() + interval '30 seconds' END,
  false, s.status = 'failed' AND (n / 7) % 1000 < 15, false,
  CASE WHEN n % 3 = 0 THEN (ARRAY['acme', 'globex', 'initech'])[1 + (n / 3) % 3] END,
  CASE WHEN n % 3 = 0 THEN 'tenant-key' ELSE 'admin' END
FROM (
  SELECT n, now() - (:total - n) * (CAST(:span_s AS float8) / :total) * interval '1 second' AS t,
    CASE
      WHEN n > :total - :live THEN (CASE WHEN n % 20 < 2 THEN 'running' WHEN n % 20 < 4 THEN 'scheduled'
                                         WHEN n % 20 = 4 THEN 'retrying' ELSE 'queued' END)
      WHEN (n / 7) % 1000 < 20 THEN 'failed'
      WHEN (n / 7) % 1000 < 30 THEN 'cancelled'
      WHEN (n / 7) % 1000 < 35 THEN 'expired'
      ELSE 'succeeded'
    END AS status
  FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS n
) AS s,
LATERAL (SELECT lpad(to_hex((extract(epoch FROM t) * 1000)::bigint), 12, '0') AS h) AS hex
"""


#: One workflow row per 100 jobs (its 5 steps are jobs ``n`` to ``n + 4``); the newest ones still run.
FILL_WORKFLOWS = """
INSERT INTO workflows (id, type, status, job_ids, callback_job_id, created_at, updated_at, finished_at)
SELECT
  '0190c000-0000-7000-8000-' || lpad(to_hex(w), 12, '0'), 'chain',
  CASE WHEN w > CAST(:total AS bigint) / 100 - 20 THEN 'running' WHEN w % 50 = 0 THEN 'failed' ELSE 'succeeded' END,
  '[]', NULL, t, t, CASE WHEN w <= CAST(:total AS bigint) / 100 - 20 THEN t END
FROM (
  SELECT w, now() - (:total - w * 100) * (CAST(:span_s AS float8) / :total) * interval '1 second' AS t
  FROM generate_series(CAST(:first AS bigint) / 100, CAST(:last AS bigint) / 100) AS w
  WHERE w * 100 BETWEEN CAST(:first AS bigint) AND CAST(:last AS bigint)
) AS s
"""


def live_rows(total: int) -> int:
    """How many of the newest rows wait or run: 2,000, at most 1% of the table."""
    return max(1, min(2000, total // 100))


@contextmanager
def private_database(admin_url: str = DEFAULT_ADMIN_URL, prefix: str = "jobrelay_fill") -> Iterator[str]:
    """A database of its own on the server of ``admin_url``, dropped at the end (also when the caller fails)."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def fill(url: str, total: int, *, span_s: float = 7 * 86400.0, batch: int = 1_000_000) -> float:
    """Migrate the database at ``url`` and fill it with ``total`` jobs, then ``VACUUM ANALYZE``; the seconds taken.

    Written in slices of ``batch`` rows (one transaction each), so 10M rows never sit in one
    transaction's memory; each slice is the same statement over its range of ``n``.
    """
    store_engine = create_store_engine(url)
    migrate(store_engine)
    store_engine.dispose()
    # NOTE: a plain engine: the store's has STORE_TIMEOUT_S as its statement_timeout.
    engine = create_engine(url)
    started = time.perf_counter()
    for first in range(1, total + 1, batch):
        values = {"total": total, "span_s": span_s, "live": live_rows(total), "first": first,
                  "last": min(total, first + batch - 1)}  # fmt: skip
        with engine.begin() as conn:
            conn.execute(text(FILL), values)
            conn.execute(text(FILL_WORKFLOWS), values)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE jobs"))
    engine.dispose()
    return time.perf_counter() - started
