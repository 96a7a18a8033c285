"""Process isolation's parts that need no worker: the child's description of an exception, rebuilt by the parent."""

from __future__ import annotations

import traceback

from services.worker.isolation.child import raised
from services.worker.isolation.pool import IsolatedTaskError, RemoteTraceback, exception_of
from services.worker.middleware.outcomes import error_body
from services.worker.retry_policy import decide
from shared.catalog import Catalog
from shared.errors import PermanentTaskFailure


class Unpicklable(Exception):
    def __init__(self, code: int, why: str) -> None:
        super().__init__(f"{code}: {why}")


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


class Refused(Exception):
    pass


def _raise(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_a_pickling_exception_comes_back_as_itself_with_the_childs_traceback() -> None:
    rebuilt = exception_of(raised(_raise(ValueError("bad month")), None))
    assert type(rebuilt) is ValueError and str(rebuilt) == "bad month"
    assert isinstance(rebuilt.__cause__, RemoteTraceback)
    assert "_raise" in "".join(traceback.format_exception(rebuilt))


def test_one_that_does_not_unpickle_keeps_its_name_message_and_traceback() -> None:
    rebuilt = exception_of(raised(_raise(Unpicklable(7, "no way back")), None))
    assert isinstance(rebuilt, IsolatedTaskError)
    body = error_body(rebuilt, retryable=True)
    assert (body["type"], body["message"]) == ("Unpicklable", "7: no way back")
    assert "no way back" in body["traceback"]


def test_retryability_follows_the_tasks_non_retryable_types_across_the_pipe() -> None:
    catalog = Catalog()

    @catalog.task(name="a.b", non_retryable=[Unpicklable], isolation="process")
    def fn() -> None: ...

    definition = catalog.get("a.b")
    rebuilt = exception_of(raised(_raise(Unpicklable(1, "x")), definition))
    assert isinstance(rebuilt, PermanentTaskFailure)
    assert not decide(definition, rebuilt, attempts=1, max_retries=3).retryable
    # A pickling one is itself, so the retry policy's isinstance sees its type
    carried = exception_of(raised(_raise(Refused("no")), None))
    assert type(carried) is Refused


def test_an_unprintable_exception_is_still_described() -> None:
    description = raised(_raise(Unprintable()), None)
    assert description.type_name == "Unprintable" and description.message == ""
    body = error_body(exception_of(description), retryable=True)
    assert body["type"] == "Unprintable" and body["message"] == "Unprintable"


def test_the_supervisor_backs_up_an_isolated_jobs_hard_limit_later_than_its_thread() -> None:
    from services.worker.limits import ISOLATED_BACKSTOP_S, catalog_limits, hard_limit_s
    from tests.shared.store.test_jobs import make_job

    catalog = Catalog()

    @catalog.task(name="a.isolated", isolation="process", time_limit_s=10)
    def isolated() -> None: ...

    @catalog.task(name="a.threaded", time_limit_s=10)
    def threaded() -> None: ...

    limits_of = catalog_limits(catalog)
    assert limits_of(make_job(task="a.threaded", time_limit_s=10)).hard_limit_s == hard_limit_s(10)
    assert (
        limits_of(make_job(task="a.isolated", time_limit_s=10)).hard_limit_s == hard_limit_s(10) + ISOLATED_BACKSTOP_S
    )
    assert limits_of(make_job(task="a.isolated", time_limit_s=None)).hard_limit_s is None
