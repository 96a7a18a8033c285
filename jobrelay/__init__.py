"""jobrelay's public face: everything a task module or a client script imports.

A task module (named in ``TASK_MODULES``)::

    from jobrelay import Retry, Schema, report_progress, result_file, task

(an ``async def`` task awaits ``report_progress_async`` rather than calling ``report_progress``).

A script or service talking to the API (httpx, sync or async; ``JobrelayClient`` needs only the stdlib)::

    from jobrelay import ApiInvalidRequest, AsyncClient, Client, JobrelayClient, job_request

and a declared task sends itself: ``handle = thumbnails.submit(sizes=[64])``, ``handle.result()``.

Import these names from ``jobrelay`` only. The ``shared`` and ``services``
packages behind them are jobrelay's internals: they move as the code is laid
out anew. They are installed as top-level packages too, so a project with a
``shared`` or ``services`` package of its own cannot load jobrelay beside it;
importing ``jobrelay`` then fails at once with a message saying which.
Importing ``jobrelay`` connects to nothing and loads no Redis, SQL or Dramatiq
code.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def _check_internal_packages() -> None:
    """Fail with a clear message when another ``shared`` or ``services`` package shadows jobrelay's own."""
    home = Path(__file__).resolve().parent.parent
    for name in ("shared", "services"):
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        if origin is None or Path(origin).resolve().parent.parent != home:
            found = origin or "nowhere"
            raise ImportError(
                f"jobrelay needs its own top-level package {name!r} (installed beside jobrelay in {home}), "
                f"but {name!r} is found at {found}: a package of that name in your project shadows it; "
                "rename yours to use jobrelay in the same interpreter"
            )


_check_internal_packages()

# NOTE: after the check: with a foreign ``shared`` first on the path these imports would fail obscurely.
from services.worker.context import CurrentJob, report_progress, report_progress_async, result_file  # noqa: E402
from services.worker.context import job_view as current_job  # noqa: E402
from services.worker.retry_policy import Retry  # noqa: E402
from shared.catalog import task  # noqa: E402
from shared.client import (  # noqa: E402
    ApiBadRequest,
    ApiConflict,
    ApiForbidden,
    ApiInvalidRequest,
    ApiNotFound,
    ApiPayloadTooLarge,
    ApiServerError,
    ApiUnauthorized,
    ApiUnavailable,
    ClientError,
    ConnectionFailed,
    JobrelayClient,
    WaitTimeout,
    job_request,
)
from shared.client.aio import AsyncClient  # noqa: E402
from shared.client.calls import RetryPolicy  # noqa: E402
from shared.client.handles import AsyncJobHandle, JobHandle  # noqa: E402
from shared.client.sync import Client  # noqa: E402
from shared.lifespans import resources, worker_lifespan  # noqa: E402
from shared.schema import Schema  # noqa: E402

__all__ = [
    "ApiBadRequest",
    "ApiConflict",
    "ApiForbidden",
    "ApiInvalidRequest",
    "ApiNotFound",
    "ApiPayloadTooLarge",
    "ApiServerError",
    "ApiUnauthorized",
    "ApiUnavailable",
    "AsyncClient",
    "AsyncJobHandle",
    "Client",
    "ClientError",
    "ConnectionFailed",
    "CurrentJob",
    "JobHandle",
    "JobrelayClient",
    "Retry",
    "RetryPolicy",
    "Schema",
    "WaitTimeout",
    "current_job",
    "job_request",
    "report_progress",
    "report_progress_async",
    "resources",
    "result_file",
    "task",
    "worker_lifespan",
]
