"""Schedules: periodic jobs from schedules.toml, the API and the built-in housekeeping.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shared.store.models import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("task", sa.String(200), nullable=False),
        sa.Column("args", sa.JSON, nullable=False),
        sa.Column("cron", sa.String(200), nullable=True),
        sa.Column("interval_s", sa.Integer, nullable=True),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("misfire", sa.String(16), nullable=False),
        sa.Column("misfire_grace_s", sa.Float, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("next_run_at", UtcDateTime, nullable=True),
        sa.Column("last_run_at", UtcDateTime, nullable=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("file_hash", sa.String(64), nullable=True),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.CheckConstraint("(cron IS NULL) <> (interval_s IS NULL)", name="ck_schedules_one_timing"),
    )


def downgrade() -> None:
    op.drop_table("schedules")
