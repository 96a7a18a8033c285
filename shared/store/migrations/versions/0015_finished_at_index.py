"""The jobs finished in a time range, from a partial index on ``finished_at``.

The console's charts (jobs out and failed per minute, run-time percentiles of the last
hour) looked for the jobs finished in the last hour among the jobs created in the last
day (the id's time bound): a day of rows read for an hour of answers, a million of them
at 10,000,000 jobs a week, and a job that waited longer than a day left out. Rows that
have not finished hold no entry; a job gets its entry when it finishes (its finish
rewrites every index entry anyway: the status is indexed, so the update is not HOT).

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NOTE: a plain CREATE INDEX, as in 0014: writes to the jobs table wait while it builds.
    finished = sa.column("finished_at").is_not(None)
    op.create_index("ix_jobs_finished_at", "jobs", ["finished_at"], sqlite_where=finished, postgresql_where=finished)


def downgrade() -> None:
    op.drop_index("ix_jobs_finished_at", "jobs")
