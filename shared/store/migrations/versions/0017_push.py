"""Push: a job or workflow submitted with a ``callback_url`` is POSTed to it once it ends.

``push_due`` stands while the final state is still to be announced (set at submission, and again when
a dead letter is requeued); the push relay clears it in the commit that writes the delivery job, whose
id it keeps in ``push_job_id``. The partial index holds only the rows it has to look at.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("jobs", "workflows"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("callback_url", sa.Text, nullable=True))
            batch.add_column(sa.Column("push_due", sa.Boolean, nullable=False, server_default=sa.text("false")))
            batch.add_column(sa.Column("push_job_id", sa.String(36), nullable=True))
        where = sa.text("push_due")
        # NOTE: by status: the relay reads the final ones, not the many a backlog may hold waiting.
        op.create_index(f"ix_{table}_push_due", table, ["status", "id"], sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    for table in ("workflows", "jobs"):
        op.drop_index(f"ix_{table}_push_due", table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("push_job_id")
            batch.drop_column("push_due")
            batch.drop_column("callback_url")
