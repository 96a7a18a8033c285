"""Testing tasks through jobrelay with no server: ``run`` one job, or a whole stack per test.

::

    from jobrelay.testing import run

    def test_thumbnails():
        job = run(make_thumbnails, {"sizes": [64]}, resources={"db": FakeDb()})
        assert job["status"] == "succeeded" and job["attempts"] == 1

``run`` takes a job of a task (its name or the decorated function) through the same path as the
worker: the API's validation (bad args raise ``ApiInvalidRequest`` with the API's 422 message), the
task's retries (backoff waited on a virtual clock), time limit, result encoding and progress. It
returns the job as ``GET /v1/jobs/{id}`` shows it. It enters the registered worker lifespans,
unless ``resources=`` gives the mapping ``jobrelay.resources()`` returns instead (fakes).

The ``jobrelay_stack`` pytest fixture (registered by the ``jobrelay`` distribution) is a
``JobrelayStack``: ``submit``, ``job``, ``drain``, ``advance`` and ``client``. Neither opens a socket
or a file outside a temporary directory. This module loads the worker and the API; ``import
jobrelay`` alone still does not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from services.testing.stack import InProcessClient, JobrelayStack

__all__ = ["InProcessClient", "JobrelayStack", "run"]


def run(
    task: str | Callable[..., Any],
    args: Mapping[str, Any] | None = None,
    *,
    resources: Mapping[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run one job of ``task`` to its end in this process; the job as the API shows it.

    ``options`` are the job request's fields (``max_retries``, ``time_limit_s``, ``delay_s``, ...).
    """
    with JobrelayStack(resources=resources) as stack:
        return stack.run_until_final(stack.submit(task, args, **options))
