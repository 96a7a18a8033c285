"""The task catalog: one declaration per task, on its implementation.

``@task(name=..., queue=...)`` records a ``TaskSpec`` (name, queue, retry
policy, limits, priority, isolation and the argument schema derived from type hints) in
a ``Catalog``. Workers register their catalog's specs in the job store at
boot; the API validates submissions against what is registered there and
never imports task code.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from shared.errors import TaskError
from shared.flow.limits import FlowLimits, LimitError, check_limits, parse_rate
from shared.schema import JsonSchema, schema_for_function

F = TypeVar("F", bound=Callable[..., Any])

TASK_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
QUEUE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
#: How long a cancelled task may go on running before its worker process is killed (``cancel_grace_s``).
DEFAULT_CANCEL_GRACE_S = 2.0
#: The longest ``unique_for_s`` or ``debounce_s``: a year, as the longest delay.
MAX_UNIQUE_S = 365 * 86400.0
#: Where a task's jobs run: a worker thread, or a child process of their own (``services/worker/isolation/``).
ISOLATIONS = ("thread", "process")


@dataclass(frozen=True)
class TaskSpec:
    """What the API and the worker need to know about a task, without its code."""

    name: str
    queue: str = "default"
    max_retries: int = 3
    time_limit_s: float | None = 600.0
    max_age_s: float | None = None
    priority: int = 0
    min_backoff_s: float = 1.0
    max_backoff_s: float = 3600.0
    non_retryable: tuple[str, ...] = ()
    description: str = ""
    args_schema: JsonSchema = field(default_factory=dict)
    #: Flow limits (``shared/flow/limits.py``): at most ``concurrency`` running at once (per value of the
    #: argument at ``concurrency_key``), at most ``rate_limit`` ("100/m") starts (per ``rate_limit_key``).
    concurrency: int | None = None
    concurrency_key: str | None = None
    rate_limit: str | None = None
    rate_limit_key: str | None = None
    #: Callbacks: the task submitted as a new job when a job of this one succeeds / fails for good.
    on_success: str | None = None
    on_failure: str | None = None
    #: Seconds a cancelled job may go on running before its worker process is killed (``services/worker/limits.py``).
    cancel_grace_s: float = DEFAULT_CANCEL_GRACE_S
    #: Unique jobs (``shared/store/uniqueness.py``): while a job of this task with the same arguments waits
    #: or runs, for at most ``unique_for_s``, a submission returns it; ``debounce_s``: of a burst of
    #: submissions, only the last runs, ``debounce_s`` after it. At most one of the two.
    unique_for_s: float | None = None
    debounce_s: float | None = None
    isolation: str = "thread"

    def limits(self) -> FlowLimits:
        rate = parse_rate(self.rate_limit) if self.rate_limit is not None else None
        return FlowLimits(self.name, self.concurrency, self.concurrency_key, rate, self.rate_limit_key)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "queue": self.queue,
            "args_schema": self.args_schema,
            "max_retries": self.max_retries,
            "time_limit_s": self.time_limit_s,
            "max_age_s": self.max_age_s,
            "priority": self.priority,
            "min_backoff_s": self.min_backoff_s,
            "max_backoff_s": self.max_backoff_s,
            "non_retryable": list(self.non_retryable),
            "description": self.description,
            "concurrency": self.concurrency,
            "concurrency_key": self.concurrency_key,
            "rate_limit": self.rate_limit,
            "rate_limit_key": self.rate_limit_key,
            "on_success": self.on_success,
            "on_failure": self.on_failure,
            "cancel_grace_s": self.cancel_grace_s,
            "unique_for_s": self.unique_for_s,
            "debounce_s": self.debounce_s,
            "isolation": self.isolation,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskSpec:
        return cls(
            name=data["name"],
            queue=data["queue"],
            max_retries=data["max_retries"],
            time_limit_s=data["time_limit_s"],
            max_age_s=data["max_age_s"],
            priority=data["priority"],
            min_backoff_s=data.get("min_backoff_s", 1.0),
            max_backoff_s=data.get("max_backoff_s", 3600.0),
            non_retryable=tuple(data.get("non_retryable", ())),
            description=data.get("description", ""),
            args_schema=data["args_schema"],
            concurrency=data.get("concurrency"),
            concurrency_key=data.get("concurrency_key"),
            rate_limit=data.get("rate_limit"),
            rate_limit_key=data.get("rate_limit_key"),
            on_success=data.get("on_success"),
            on_failure=data.get("on_failure"),
            cancel_grace_s=data.get("cancel_grace_s", DEFAULT_CANCEL_GRACE_S),
            unique_for_s=data.get("unique_for_s"),
            debounce_s=data.get("debounce_s"),
            isolation=data.get("isolation", "thread"),
        )


@dataclass(frozen=True)
class TaskDefinition:
    """A spec with its implementation; only the worker holds these."""

    spec: TaskSpec
    fn: Callable[..., Any]
    non_retryable_types: tuple[type[BaseException], ...] = ()


class Catalog:
    """The tasks a process knows, by name."""

    def __init__(self) -> None:
        self._tasks: dict[str, TaskDefinition] = {}

    def task(
        self,
        *,
        name: str,
        queue: str = "default",
        max_retries: int = 3,
        time_limit_s: float | None = 600.0,
        max_age_s: float | None = None,
        priority: int = 0,
        min_backoff_s: float = 1.0,
        max_backoff_s: float = 3600.0,
        non_retryable: Iterable[type[BaseException]] = (),
        concurrency: int | None = None,
        concurrency_key: str | None = None,
        rate_limit: str | None = None,
        rate_limit_key: str | None = None,
        on_success: str | None = None,
        on_failure: str | None = None,
        cancel_grace_s: float = DEFAULT_CANCEL_GRACE_S,
        unique_for_s: float | None = None,
        debounce_s: float | None = None,
        isolation: str = "thread",
    ) -> Callable[[F], F]:
        """Declare the decorated function as task ``name``.

        The function is returned itself, given ``.submit(**args)``, ``.asubmit(**args)`` and
        ``.using(client, **options)`` to send it to the API (``shared/client/handles.py``).

        ``isolation="process"`` runs each job in a child process of its own (a crash or a kill
        costs only that job); an ``async def`` task cannot have it (refused here).
        """
        if not TASK_NAME.fullmatch(name):
            raise TaskError(f"task name {name!r} must be dotted lowercase, like 'reports.generate'")
        if not QUEUE_NAME.fullmatch(queue):
            raise TaskError(f"task {name}: queue {queue!r} must be lowercase letters, digits, '_' or '-'")
        if max_retries < 0:
            raise TaskError(f"task {name}: max_retries must be >= 0")
        if time_limit_s is not None and time_limit_s <= 0:
            raise TaskError(f"task {name}: time_limit_s must be positive")
        for option, callback in (("on_success", on_success), ("on_failure", on_failure)):
            if callback is not None and (not isinstance(callback, str) or not TASK_NAME.fullmatch(callback)):
                raise TaskError(f"task {name}: {option} must name a task, like 'reports.notify'; got {callback!r}")
        if not 0 < cancel_grace_s <= 3600:
            raise TaskError(f"task {name}: cancel_grace_s must be above 0 and at most 3600")
        for option, value in (("unique_for_s", unique_for_s), ("debounce_s", debounce_s)):
            if value is not None and not 0 < value <= MAX_UNIQUE_S:
                raise TaskError(f"task {name}: {option} must be positive and at most {MAX_UNIQUE_S:g}")
        if unique_for_s is not None and debounce_s is not None:
            raise TaskError(f"task {name}: give unique_for_s or debounce_s, not both")
        if isolation not in ISOLATIONS:
            raise TaskError(f"task {name}: isolation {isolation!r} must be one of {', '.join(ISOLATIONS)}")
        exc_types = tuple(non_retryable)

        def decorate(fn: F) -> F:
            try:
                check_limits(
                    name,
                    concurrency=concurrency,
                    concurrency_key=concurrency_key,
                    rate_limit=rate_limit,
                    rate_limit_key=rate_limit_key,
                    parameters=inspect.signature(fn).parameters,
                )
            except LimitError as exc:
                raise TaskError(f"task {name}: {exc}") from None
            if isolation == "process" and inspect.iscoroutinefunction(fn):
                # NOTE: an async task waits on I/O, which a thread slot's event loop serves well; a
                # child per job would serve one await at a time and lose nothing a crash could cost.
                raise TaskError(
                    f"task {name}: isolation='process' is for sync functions; an async def task runs "
                    "on the worker's event loop (isolation='thread')"
                )
            spec = TaskSpec(
                name=name,
                queue=queue,
                max_retries=max_retries,
                time_limit_s=time_limit_s,
                max_age_s=max_age_s,
                priority=priority,
                min_backoff_s=min_backoff_s,
                max_backoff_s=max_backoff_s,
                non_retryable=tuple(f"{t.__module__}.{t.__qualname__}" for t in exc_types),
                description=" ".join(inspect.cleandoc(fn.__doc__ or "").split("\n\n")[0].split()),
                args_schema=schema_for_function(fn),
                concurrency=concurrency,
                concurrency_key=concurrency_key,
                rate_limit=rate_limit.strip() if rate_limit is not None else None,
                rate_limit_key=rate_limit_key,
                on_success=on_success,
                on_failure=on_failure,
                cancel_grace_s=cancel_grace_s,
                unique_for_s=unique_for_s,
                debounce_s=debounce_s,
                isolation=isolation,
            )
            existing = self._tasks.get(name)
            if existing is not None and existing.fn.__qualname__ != fn.__qualname__:
                raise TaskError(f"task {name} is declared twice ({existing.fn.__qualname__})")
            self._tasks[name] = TaskDefinition(spec=spec, fn=fn, non_retryable_types=exc_types)
            # NOTE: imported here, so a worker that never submits does not load the HTTP client at import.
            from shared.client.handles import attach

            attach(fn, name, spec.args_schema)
            return fn

        return decorate

    def get(self, name: str) -> TaskDefinition:
        try:
            return self._tasks[name]
        except KeyError:
            raise TaskError(f"unknown task {name!r}") from None

    def definitions(self) -> list[TaskDefinition]:
        return [self._tasks[name] for name in sorted(self._tasks)]

    def specs(self) -> list[TaskSpec]:
        return [definition.spec for definition in self.definitions()]

    def queues(self) -> list[str]:
        return sorted({definition.spec.queue for definition in self._tasks.values()})


#: The catalog the ``@task`` decorator fills.
default_catalog = Catalog()
task = default_catalog.task
