"""Running task functions directly inside a job context, with results in a directory.

The tasks read their settings (``SMTP_URL``, ``DATABASE_URL``, ...) as the worker
gives them; here ``task_env`` parses them from the variables a test names, never
from the test process's environment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.worker.context import JobContext, enter_job, leave_job, use_settings
from services.worker.tasks.reports import dispose_engines
from shared.ids import new_id
from shared.results import DirectoryStorage
from shared.settings import Settings


class ProgressLog:
    """A progress sink that keeps what it was told."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def report_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        self.calls.append(progress)


@pytest.fixture
def results(tmp_path: Path) -> DirectoryStorage:
    return DirectoryStorage(tmp_path / "results")


@pytest.fixture
def job(results: DirectoryStorage) -> Iterator[JobContext]:
    """The task under test runs as attempt 1 of a fresh job."""
    context = JobContext(job_id=new_id(), task="tests", attempt=1, sink=ProgressLog(), results=results)
    token = enter_job(context)
    yield context
    leave_job(token)


@pytest.fixture(autouse=True)
def task_env() -> Iterator[Callable[..., Settings]]:
    """``task_env(SMTP_URL=...)``: the tasks' settings from these variables and those named before (blank unsets)."""
    variables: dict[str, str] = {}

    def configure(**given: str) -> Settings:
        variables.update(given)
        settings = Settings.from_env(variables)
        use_settings(settings)
        return settings

    configure()
    yield configure
    use_settings(None)


@pytest.fixture(autouse=True)
def _fresh_engines() -> Iterator[None]:
    # The tasks cache engines per URL; each test's database goes away with it.
    yield
    dispose_engines()
