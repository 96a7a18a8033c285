"""Tenants: each job records the namespace and the name of the API key that submitted it.

A namespaced key's idempotency keys live in its namespace: they are stored as
``<namespace>\\x1f<key>``, so the column grows to hold a 200-character key behind a namespace.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("namespace", sa.String(64), nullable=True))
        batch.add_column(sa.Column("submitted_by", sa.String(200), nullable=True))
        batch.alter_column(
            "idempotency_key", type_=sa.String(300), existing_type=sa.String(200), existing_nullable=True
        )
    where = sa.column("namespace").is_not(None)
    op.create_index("ix_jobs_namespace_id", "jobs", ["namespace", "id"], sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    op.drop_index("ix_jobs_namespace_id", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column(
            "idempotency_key", type_=sa.String(200), existing_type=sa.String(300), existing_nullable=True
        )
        batch.drop_column("submitted_by")
        batch.drop_column("namespace")
