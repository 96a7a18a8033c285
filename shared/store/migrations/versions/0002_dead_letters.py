"""Dead letters: a flag and a partial index per queue.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("dead", sa.Boolean, nullable=False, server_default=sa.text("false")))
    op.create_index(
        "ix_jobs_dead",
        "jobs",
        ["queue", "id"],
        sqlite_where=sa.text("dead"),
        postgresql_where=sa.text("dead"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_dead", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("dead")
