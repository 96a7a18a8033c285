"""Indexes on mostly-NULL columns hold only the rows that have a value.

Most jobs belong to no workflow and no schedule, carry no idempotency key and,
unless running, no lease owner: their index entries were never looked up (every
query on these columns compares them to a value), yet every insert and every
non-HOT update wrote them.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

#: (index name, columns, unique) of the indexes made partial, each on ``columns[0] IS NOT NULL``.
INDEXES = [
    ("ix_jobs_workflow_id", ["workflow_id", "id"], False),
    ("ix_jobs_schedule_id", ["schedule_id", "id"], False),
    ("ux_jobs_idempotency_key", ["idempotency_key"], True),
    ("ix_jobs_lease_owner", ["lease_owner"], False),
]


def upgrade() -> None:
    for name, columns, unique in INDEXES:
        op.drop_index(name, "jobs")
        where = sa.column(columns[0]).is_not(None)
        op.create_index(name, "jobs", columns, unique=unique, sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    for name, columns, unique in INDEXES:
        op.drop_index(name, "jobs")
        op.create_index(name, "jobs", columns, unique=unique)
