"""A queue's jobs in one status, newest first, from one index; the running workflows; statistics on dead letters.

``GET /v1/jobs?queue=alpha&status=failed`` (and the console's list with both filters) walked
the index on the queue and read every row of the queue to find the few failed ones: 0.14,
0.70 and 39 ms of SQL at 10k, 100k and 1M jobs. With (queue, status, id) the walk reads only
the rows of the page. The other combinations are bounded by the page's scan limit instead
(``shared/store/pages.py``): each index costs every insert and every claim and finish.

The stale-workflow check (``WorkflowStore.running_ids``) read the whole workflows
table for its running rows: a partial index holds those only.

On PostgreSQL, extended statistics (most common values) on (queue, dead): past
``DEAD_EXACT_MAX`` a queue's dead letters are counted from the planner's estimate
(``shared/store/dead_letters.py``), and dead letters gather in the queue whose
integration is down, which the estimate of two independent columns would spread
over every queue.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NOTE: a plain CREATE INDEX: it holds writes to the jobs table back while it builds (seconds at a
    # million rows). CONCURRENTLY would not, but cannot run in the migration's transaction.
    op.create_index("ix_jobs_queue_status_id", "jobs", ["queue", "status", "id"])
    running = sa.text("status = 'running'")
    op.create_index("ix_workflows_running", "workflows", ["updated_at"], sqlite_where=running, postgresql_where=running)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE STATISTICS IF NOT EXISTS st_jobs_queue_dead (mcv) ON queue, dead FROM jobs")
        op.execute("ANALYZE jobs")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP STATISTICS IF EXISTS st_jobs_queue_dead")
    op.drop_index("ix_workflows_running", "workflows")
    op.drop_index("ix_jobs_queue_status_id", "jobs")
