"""Paused queues: one row per paused queue, so a pause survives restarts of every service.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shared.store.models import UtcDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "queue_pauses",
        sa.Column("queue", sa.String(64), primary_key=True),
        sa.Column("paused_at", UtcDateTime, nullable=False),
        sa.Column("paused_by", sa.String(200), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("queue_pauses")
