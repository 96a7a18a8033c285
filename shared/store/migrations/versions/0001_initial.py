"""Jobs and the task catalog.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shared.store.models import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("task", sa.String(200), nullable=False),
        sa.Column("queue", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("args", sa.JSON, nullable=False),
        sa.Column("priority", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("max_retries", sa.Integer, nullable=False),
        sa.Column("time_limit_s", sa.Float, nullable=True),
        sa.Column("max_age_s", sa.Float, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("progress", sa.JSON, nullable=True),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("result_url", sa.Text, nullable=True),
        sa.Column("error", sa.JSON, nullable=True),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("scheduled_for", UtcDateTime, nullable=True),
        sa.Column("started_at", UtcDateTime, nullable=True),
        sa.Column("finished_at", UtcDateTime, nullable=True),
        sa.Column("next_attempt_at", UtcDateTime, nullable=True),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.Column("workflow_id", sa.String(36), nullable=True),
        sa.Column("schedule_id", sa.String(200), nullable=True),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("published_at", UtcDateTime, nullable=True),
        sa.Column("lease_owner", sa.String(100), nullable=True),
        sa.Column("lease_expires_at", UtcDateTime, nullable=True),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.text("false")),
    )
    op.create_index("ix_jobs_status_id", "jobs", ["status", "id"])
    op.create_index("ix_jobs_task_id", "jobs", ["task", "id"])
    op.create_index("ix_jobs_queue_id", "jobs", ["queue", "id"])
    op.create_index("ix_jobs_workflow_id", "jobs", ["workflow_id", "id"])
    op.create_index("ix_jobs_schedule_id", "jobs", ["schedule_id", "id"])
    op.create_index("ux_jobs_idempotency_key", "jobs", ["idempotency_key"], unique=True)
    op.create_index(
        "ix_jobs_unpublished",
        "jobs",
        ["created_at"],
        sqlite_where=sa.text("published_at IS NULL"),
        postgresql_where=sa.text("published_at IS NULL"),
    )
    op.create_index("ix_jobs_lease_owner", "jobs", ["lease_owner"])
    op.create_table(
        "tasks",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("queue", sa.String(64), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("registered_at", UtcDateTime, nullable=False),
        sa.Column("registered_by", sa.String(200), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tasks")
    op.drop_table("jobs")
