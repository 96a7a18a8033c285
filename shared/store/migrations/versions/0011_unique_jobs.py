"""Unique jobs and debounce: a job's uniqueness key, held by one waiting or running job at a time.

The partial unique index is what makes ``unique_for_s`` race-free across API processes: two
submissions that both found no holder cannot both insert one; the loser's transaction fails
and is retried, and then finds the winner's job (``shared/store/uniqueness.py``).

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shared.store.models import UNIQUE_HOLDING, UtcDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("unique_key", sa.String(64), nullable=True))
        batch.add_column(sa.Column("unique_until", UtcDateTime, nullable=True))
    where = sa.text(UNIQUE_HOLDING)
    op.create_index(
        "ux_jobs_unique_key", "jobs", ["unique_key"], unique=True, sqlite_where=where, postgresql_where=where
    )


def downgrade() -> None:
    op.drop_index("ux_jobs_unique_key", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("unique_until")
        batch.drop_column("unique_key")
