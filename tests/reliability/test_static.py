"""Scenario 8, static half: bandit on shared/ and services/, and SQL built only through SQLAlchemy."""

from __future__ import annotations

import ast

from tests.reliability.static import (
    REPO,
    _is_built_string,
    bandit_findings,
    bandit_section,
    string_built_sql,
    unexplained,
)


def test_bandit_finds_nothing_that_is_not_explained_in_docs_reliability() -> None:
    findings = bandit_findings()
    assert unexplained(findings) == [], "explain or fix: " + "\n".join(map(str, unexplained(findings)))
    # The long form (`python -m bench.chaos`) writes the explanations; they must be current.
    assert bandit_section() in (REPO / "docs" / "reliability.md").read_text()


def test_sql_is_built_only_through_sqlalchemy() -> None:
    assert string_built_sql() == []


def test_the_sql_check_catches_string_built_sql() -> None:
    # Given the shapes string-built SQL takes
    built = ['text(f"SELECT {x}")', 'conn.execute("SELECT %s" % x)', 'c.execute("SELECT " + x)',
             'c.exec_driver_sql("DROP {}".format(x))']  # fmt: skip
    safe = ['text("SELECT 1")', 'conn.execute(select(t))', 'c.execute("BEGIN" if a else "COMMIT")',
            'text(f"SELECT 1")']  # fmt: skip
    # Then each built one is caught and no safe one is
    assert all(_is_built_string(ast.parse(code, mode="eval").body.args[0]) for code in built)  # type: ignore[attr-defined]
    assert not any(_is_built_string(ast.parse(code, mode="eval").body.args[0]) for code in safe)  # type: ignore[attr-defined]


def test_the_suite_leaves_the_task_catalog_of_the_test_process_alone() -> None:
    # Only the worker processes import tests.reliability.effect (TASK_MODULES); other tests here see the real catalog.
    import tests.reliability.api_faults
    import tests.reliability.poison
    import tests.reliability.scenarios  # noqa: F401
    from shared.catalog import default_catalog

    assert [d.spec.name for d in default_catalog.definitions() if d.spec.name.startswith("reliability.")] == []
