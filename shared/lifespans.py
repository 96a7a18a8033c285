"""Worker lifespans: what a task module declares to hold per-process resources (pools, clients).

``@worker_lifespan`` registers a generator function, sync or ``async``, in the style of
Starlette's lifespan: the code before its single ``yield`` runs once when a worker process
starts, the mapping it yields is merged into ``resources()``, and the code after the ``yield``
runs when the process stops. Running them is the worker's business
(``services/worker/lifespans.py``); this module only keeps the declarations and the mapping the
running ones gave, so a task module and the test mode import nothing heavy.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from shared.errors import LifespanError

F = TypeVar("F", bound=Callable[..., Any])

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def lifespan_name(fn: Callable[..., Any]) -> str:
    """How logs and errors name a lifespan: its module and qualified name."""
    return f"{fn.__module__}.{fn.__qualname__}"


class LifespanRegistry:
    """The lifespans a process declared, in the order they were registered."""

    def __init__(self) -> None:
        self._lifespans: dict[str, Callable[..., Any]] = {}
        self._lock = threading.Lock()

    def register(self, fn: F) -> F:
        """Declare ``fn`` (a generator function with one ``yield``) a worker lifespan; ``fn`` is returned."""
        if not (inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)):
            raise LifespanError(
                f"worker lifespan {lifespan_name(fn)} must be a generator function (def or async def) "
                "that yields its resources once"
            )
        if inspect.signature(fn).parameters:
            raise LifespanError(f"worker lifespan {lifespan_name(fn)} must take no arguments")
        with self._lock:
            # NOTE: keyed by name, so a module imported twice (tests, reloads) registers once.
            self._lifespans[lifespan_name(fn)] = fn
        return fn

    def lifespans(self) -> list[Callable[..., Any]]:
        with self._lock:
            return list(self._lifespans.values())


#: The registry ``@jobrelay.worker_lifespan`` fills.
default_lifespans = LifespanRegistry()
worker_lifespan = default_lifespans.register

_resources: Mapping[str, Any] = _EMPTY


def use_resources(resources: Mapping[str, Any] | None) -> None:
    """Set what ``resources()`` returns in this process (the lifespans' merged mapping; None: none)."""
    global _resources
    _resources = MappingProxyType(dict(resources)) if resources else _EMPTY


def resources() -> Mapping[str, Any]:
    """The resources the worker's lifespans yielded, merged (read-only); empty when none ran."""
    return _resources
