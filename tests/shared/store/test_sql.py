"""InList: one array parameter on PostgreSQL, an expanding IN elsewhere, the same rows either way."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.dialects import postgresql, sqlite

from shared.store.models import tasks
from shared.store.sql import InList
from shared.store.tasks import TaskRegistry

BY_NAMES = select(tasks.c.name).where(InList(tasks.c.name, "names")).order_by(tasks.c.name)


def test_postgresql_binds_the_whole_list_as_one_array() -> None:
    sql = str(BY_NAMES.compile(dialect=postgresql.dialect()))
    assert "tasks.name = ANY (%(names)s" in sql
    assert " IN " not in sql


def test_sqlite_expands_the_list() -> None:
    sql = str(BY_NAMES.compile(dialect=sqlite.dialect()))
    assert "tasks.name IN (__[POSTCOMPILE_names])" in sql
    assert "= 1" not in sql


@pytest.mark.parametrize("names", [[], ["diagnostics.echo"], ["diagnostics.echo", "no.such.task", "diagnostics.sleep"]])
def test_selects_the_rows_whose_value_is_in_the_list(registry: TaskRegistry, engine: Engine, names: list[str]) -> None:
    with engine.connect() as conn:
        found = [row.name for row in conn.execute(BY_NAMES, {"names": names})]
    assert found == sorted(set(names) - {"no.such.task"})
