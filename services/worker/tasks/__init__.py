"""Built-in task implementations, and loading the user's ``TASK_MODULES``."""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from shared.catalog import Catalog, default_catalog
from shared.errors import TaskError

#: Modules holding the built-in tasks; ``TASK_MODULES`` adds the user's own.
BUILTIN_TASK_MODULES = (
    "services.worker.tasks.diagnostics",
    "services.worker.tasks.emails",
    "services.worker.tasks.webhooks",
    "services.worker.tasks.reports",
    "services.worker.tasks.exports",
)


def load_task_modules(extra_modules: Iterable[str] = ()) -> Catalog:
    """Import the built-in and user task modules; their ``@task`` declarations fill the catalog."""
    for module in (*BUILTIN_TASK_MODULES, *extra_modules):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise TaskError(f"TASK_MODULES: cannot import {module!r}: {exc}") from exc
    return default_catalog
