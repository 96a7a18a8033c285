"""Tenants: workflows and schedules live in the namespace of the API key that made them.

A namespaced key's schedule ids are its own: the row's id is ``<namespace>:<id>`` (``:`` is
not allowed in a schedule id, so no two namespaces' ids collide), the API shows the key ``<id>``;
the id column grows to hold a 128-character id behind a namespace.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workflows") as batch:
        batch.add_column(sa.Column("namespace", sa.String(64), nullable=True))
    with op.batch_alter_table("schedules") as batch:
        batch.add_column(sa.Column("namespace", sa.String(64), nullable=True))
        batch.alter_column("id", type_=sa.String(200), existing_type=sa.String(128), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("schedules") as batch:
        batch.alter_column("id", type_=sa.String(128), existing_type=sa.String(200), existing_nullable=False)
        batch.drop_column("namespace")
    with op.batch_alter_table("workflows") as batch:
        batch.drop_column("namespace")
