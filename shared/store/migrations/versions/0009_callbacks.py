"""Callbacks: a job's row links the callback job its outcome submitted, or says why none was.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("callback_job_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("callback_error", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("callback_error")
        batch.drop_column("callback_job_id")
