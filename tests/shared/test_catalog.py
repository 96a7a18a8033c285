"""The task catalog: declaring tasks, validating declarations, and specs as plain data."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Literal

import pytest
from jsonschema import Draft202012Validator

from shared.catalog import Catalog, TaskDefinition, TaskSpec
from shared.errors import TaskError
from shared.schema import Schema


class PermanentError(Exception):
    """A failure that retrying cannot fix."""


@pytest.fixture
def fresh() -> Catalog:
    """An empty catalog of this test's own (never the module-level default catalog)."""
    return Catalog()


# --- declaring ------------------------------------------------------------------------------


def test_task_records_a_spec_and_returns_the_function_unchanged(fresh: Catalog) -> None:
    def generate(month: str, fmt: Literal["csv", "json"] = "csv") -> str:
        """Generate the monthly report.

        Longer explanation that is not part of the description.
        """
        return f"{month}.{fmt}"

    decorated = fresh.task(name="reports.generate", queue="reports")(generate)

    assert decorated is generate
    assert decorated("2024-05") == "2024-05.csv"
    definition = fresh.get("reports.generate")
    assert isinstance(definition, TaskDefinition)
    assert definition.fn is generate
    assert definition.spec.name == "reports.generate"
    assert definition.spec.queue == "reports"
    assert definition.spec.description == "Generate the monthly report."
    assert definition.spec.args_schema == {
        "type": "object",
        "properties": {"month": {"type": "string"}, "fmt": {"enum": ["csv", "json"], "default": "csv"}},
        "additionalProperties": False,
        "required": ["month"],
    }
    Draft202012Validator.check_schema(definition.spec.args_schema)


def test_task_defaults(fresh: Catalog) -> None:
    @fresh.task(name="a.b")
    def fn() -> None: ...

    spec = fresh.get("a.b").spec

    assert spec == TaskSpec(
        name="a.b",
        queue="default",
        max_retries=3,
        time_limit_s=600.0,
        max_age_s=None,
        priority=0,
        min_backoff_s=1.0,
        max_backoff_s=3600.0,
        non_retryable=(),
        description="",
        args_schema={"type": "object", "properties": {}, "additionalProperties": False},
    )
    assert fresh.get("a.b").non_retryable_types == ()


def test_task_options_are_recorded(fresh: Catalog) -> None:
    @fresh.task(
        name="billing.charge",
        queue="payments",
        max_retries=0,
        time_limit_s=None,
        max_age_s=120.0,
        priority=-5,
        min_backoff_s=0.5,
        max_backoff_s=30.0,
        non_retryable=[PermanentError, KeyError],
    )
    def charge(amount: Annotated[int, Schema(minimum=1)]) -> None:
        """Charge a card."""

    definition = fresh.get("billing.charge")

    assert definition.spec.max_retries == 0
    assert definition.spec.time_limit_s is None
    assert definition.spec.max_age_s == 120.0
    assert definition.spec.priority == -5
    assert definition.spec.min_backoff_s == 0.5
    assert definition.spec.max_backoff_s == 30.0
    assert definition.spec.non_retryable == (f"{__name__}.PermanentError", "builtins.KeyError")
    assert definition.non_retryable_types == (PermanentError, KeyError)
    assert definition.spec.args_schema["properties"]["amount"] == {"type": "integer", "minimum": 1}


def test_isolation_process_is_recorded_and_round_trips(fresh: Catalog) -> None:
    @fresh.task(name="media.transcode", isolation="process")
    def transcode(path: str) -> None: ...

    spec = fresh.get("media.transcode").spec
    assert spec.isolation == "process"
    assert TaskSpec.from_dict(json.loads(json.dumps(spec.as_dict()))).isolation == "process"


@pytest.mark.parametrize("isolation", ["processes", "Process", "fork", ""])
def test_an_unknown_isolation_is_refused_naming_the_choices(fresh: Catalog, isolation: str) -> None:
    with pytest.raises(TaskError, match=r"task a\.b: isolation .* must be one of thread, process"):
        fresh.task(name="a.b", isolation=isolation)


def test_an_async_task_cannot_be_isolated_in_a_process(fresh: Catalog) -> None:
    with pytest.raises(TaskError, match=r"task a\.b: isolation='process' is for sync functions"):

        @fresh.task(name="a.b", isolation="process")
        async def fn() -> None: ...

    with pytest.raises(TaskError):
        fresh.get("a.b")


def test_a_single_line_docstring_is_the_description(fresh: Catalog) -> None:
    @fresh.task(name="a.b")
    def fn() -> None:
        """Do the thing."""

    assert fresh.get("a.b").spec.description == "Do the thing."


def test_a_wrapped_first_paragraph_becomes_one_line(fresh: Catalog) -> None:
    @fresh.task(name="a.b")
    def fn() -> None:
        """Make the monthly report
        for every account.

        Details that stay out of the description.
        """

    assert fresh.get("a.b").spec.description == "Make the monthly report for every account."


def test_a_bad_signature_is_refused_at_declaration(fresh: Catalog) -> None:
    with pytest.raises(TaskError, match="must be a plain keyword parameter"):

        @fresh.task(name="a.b")
        def fn(*args: int) -> None: ...

    with pytest.raises(TaskError, match=r"unknown task 'a\.b'"):
        fresh.get("a.b")


@pytest.mark.parametrize("name", ["reports.generate", "a.b", "a.b.c", "reports_v2.generate_pdf", "x1.y2"])
def test_valid_task_names(fresh: Catalog, name: str) -> None:
    @fresh.task(name=name)
    def fn() -> None: ...

    assert fresh.get(name).spec.name == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "generate",  # no dot
        "Reports.generate",
        "reports.Generate",
        "reports.",
        ".generate",
        "reports..generate",
        "1reports.generate",
        "reports.2generate",
        "reports-x.generate",
        "reports generate.x",
        "reports.generate ",
        "reports.generate\n",
    ],
)
def test_bad_task_names_are_refused(fresh: Catalog, name: str) -> None:
    with pytest.raises(TaskError, match="must be dotted lowercase"):
        fresh.task(name=name)


@pytest.mark.parametrize("queue", ["default", "reports", "high-priority", "q_2", "a", "a" * 63])
def test_valid_queue_names(fresh: Catalog, queue: str) -> None:
    @fresh.task(name="a.b", queue=queue)
    def fn() -> None: ...

    assert fresh.get("a.b").spec.queue == queue


@pytest.mark.parametrize(
    "queue", ["", "Default", "1queue", "-queue", "_queue", "a.b", "a b", "a" * 64, "default\n", "dé"]
)
def test_bad_queue_names_are_refused(fresh: Catalog, queue: str) -> None:
    with pytest.raises(TaskError, match=r"^task a\.b: queue .* must be lowercase"):
        fresh.task(name="a.b", queue=queue)


@pytest.mark.parametrize("max_retries", [-1, -100])
def test_negative_max_retries_is_refused(fresh: Catalog, max_retries: int) -> None:
    with pytest.raises(TaskError, match=r"^task a\.b: max_retries must be >= 0$"):
        fresh.task(name="a.b", max_retries=max_retries)


@pytest.mark.parametrize("time_limit_s", [0, 0.0, -1.0])
def test_non_positive_time_limit_is_refused(fresh: Catalog, time_limit_s: float) -> None:
    with pytest.raises(TaskError, match=r"^task a\.b: time_limit_s must be positive$"):
        fresh.task(name="a.b", time_limit_s=time_limit_s)


def test_declaring_a_name_twice_with_different_functions_is_refused(fresh: Catalog) -> None:
    # Given: a task declared once
    @fresh.task(name="a.b")
    def first() -> None: ...

    # When: another function claims the same name
    def second() -> None: ...

    with pytest.raises(TaskError, match=r"task a\.b is declared twice \(.*first\)"):
        fresh.task(name="a.b")(second)

    # Then: the first declaration stands
    assert fresh.get("a.b").fn is first


def test_redeclaring_the_same_function_replaces_it(fresh: Catalog) -> None:
    """Importing a task module twice (same qualified name) is not a conflict."""

    def make() -> Callable[[int], None]:
        def job(x: int) -> None: ...

        return job

    first, again = make(), make()
    fresh.task(name="a.b", queue="one")(first)

    fresh.task(name="a.b", queue="two")(again)

    assert fresh.get("a.b").fn is again
    assert fresh.get("a.b").spec.queue == "two"
    assert len(fresh.definitions()) == 1


def test_catalogs_are_independent(fresh: Catalog) -> None:
    other = Catalog()

    @fresh.task(name="a.b")
    def fn() -> None: ...

    assert [spec.name for spec in fresh.specs()] == ["a.b"]
    assert other.specs() == []
    with pytest.raises(TaskError):
        other.get("a.b")


# --- looking up -----------------------------------------------------------------------------


def test_get_unknown_task_raises_task_error(fresh: Catalog) -> None:
    with pytest.raises(TaskError, match=r"^unknown task 'nope\.nothing'$"):
        fresh.get("nope.nothing")


def test_definitions_and_specs_are_sorted_by_name(fresh: Catalog) -> None:
    for name in ("zeta.run", "alpha.run", "mid.run"):
        fresh.task(name=name)(lambda: None)

    assert [d.spec.name for d in fresh.definitions()] == ["alpha.run", "mid.run", "zeta.run"]
    assert [s.name for s in fresh.specs()] == ["alpha.run", "mid.run", "zeta.run"]


def test_queues_are_sorted_and_unique(fresh: Catalog) -> None:
    assert fresh.queues() == []

    fresh.task(name="a.one", queue="reports")(lambda: None)
    fresh.task(name="a.two", queue="default")(lambda: None)
    fresh.task(name="a.three", queue="reports")(lambda: None)
    fresh.task(name="a.four", queue="bulk")(lambda: None)

    assert fresh.queues() == ["bulk", "default", "reports"]


# --- TaskSpec as data -----------------------------------------------------------------------


def _declared_spec(fresh: Catalog) -> TaskSpec:
    @fresh.task(
        name="reports.generate",
        queue="reports",
        max_retries=5,
        time_limit_s=60.0,
        max_age_s=3600.0,
        priority=2,
        min_backoff_s=0.25,
        max_backoff_s=90.0,
        non_retryable=(PermanentError,),
        concurrency=3,
        concurrency_key="month",
        rate_limit="10/s",
        on_success="reports.notify",
        on_failure="reports.alert",
        unique_for_s=30.0,
    )
    def generate(month: str, limit: Annotated[int, Schema(minimum=1)] = 10) -> None:
        """Generate a report."""

    return fresh.get("reports.generate").spec


def test_as_dict_holds_every_field(fresh: Catalog) -> None:
    spec = _declared_spec(fresh)

    data = spec.as_dict()

    assert data == {
        "name": "reports.generate",
        "queue": "reports",
        "args_schema": spec.args_schema,
        "max_retries": 5,
        "time_limit_s": 60.0,
        "max_age_s": 3600.0,
        "priority": 2,
        "min_backoff_s": 0.25,
        "max_backoff_s": 90.0,
        "non_retryable": [f"{__name__}.PermanentError"],
        "description": "Generate a report.",
        "concurrency": 3,
        "concurrency_key": "month",
        "rate_limit": "10/s",
        "rate_limit_key": None,
        "on_success": "reports.notify",
        "on_failure": "reports.alert",
        "cancel_grace_s": 2.0,
        "unique_for_s": 30.0,
        "debounce_s": None,
        "isolation": "thread",
    }


def test_as_dict_and_from_dict_round_trip(fresh: Catalog) -> None:
    spec = _declared_spec(fresh)

    assert TaskSpec.from_dict(spec.as_dict()) == spec


def test_round_trip_survives_json(fresh: Catalog) -> None:
    spec = _declared_spec(fresh)

    assert TaskSpec.from_dict(json.loads(json.dumps(spec.as_dict()))) == spec


def test_from_dict_fills_fields_added_later_with_defaults() -> None:
    """Specs stored before backoff, non_retryable and description existed still load."""
    data = {
        "name": "old.task",
        "queue": "default",
        "max_retries": 1,
        "time_limit_s": None,
        "max_age_s": None,
        "priority": 0,
        "args_schema": {"type": "object", "properties": {}, "additionalProperties": False},
    }

    spec = TaskSpec.from_dict(data)

    assert spec.min_backoff_s == 1.0
    assert spec.max_backoff_s == 3600.0
    assert spec.non_retryable == ()
    assert spec.description == ""
    assert spec.time_limit_s is None
    assert spec.isolation == "thread"


def test_from_dict_requires_the_core_fields() -> None:
    with pytest.raises(KeyError):
        TaskSpec.from_dict({"name": "a.b", "queue": "default"})


def test_task_spec_is_frozen(fresh: Catalog) -> None:
    spec = _declared_spec(fresh)

    with pytest.raises(AttributeError):
        spec.queue = "other"  # type: ignore[misc]


def test_a_callback_must_name_a_task(fresh: Catalog) -> None:
    with pytest.raises(TaskError, match=r"on_failure must name a task, like 'reports\.notify'; got 'Not A Task'"):
        fresh.task(name="a.one", on_failure="Not A Task")


def test_unique_for_s_and_debounce_s_are_checked(fresh: Catalog) -> None:
    for options, message in [
        ({"unique_for_s": 0}, r"^task a\.b: unique_for_s must be positive"),
        ({"debounce_s": -1.0}, r"^task a\.b: debounce_s must be positive"),
        ({"unique_for_s": 1, "debounce_s": 1}, r"^task a\.b: give unique_for_s or debounce_s, not both$"),
    ]:
        with pytest.raises(TaskError, match=message):
            fresh.task(name="a.b", **options)  # type: ignore[arg-type]
