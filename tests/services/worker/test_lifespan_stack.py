"""The lifespan stack on its own: order, merged read-only resources, and each declaration or run gone wrong."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from services.worker.lifespans import LifespanStack
from services.worker.middleware.event_loop import JobEventLoop
from shared.errors import LifespanError
from shared.lifespans import LifespanRegistry, resources, use_resources


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    thread = JobEventLoop(logging.getLogger("tests"))
    thread.start(timeout=5.0)
    yield thread.loop
    thread.stop()


def test_lifespans_enter_in_order_exit_in_reverse_and_merge_their_resources(loop: asyncio.AbstractEventLoop) -> None:
    seen: list[str] = []
    registry = LifespanRegistry()

    @registry.register
    def first() -> Iterator[dict[str, Any]]:
        seen.append("enter first")
        yield {"db": "pool"}
        seen.append("exit first")

    @registry.register
    async def second() -> AsyncIterator[dict[str, Any]]:
        seen.append("enter second")
        yield {"http": asyncio.get_running_loop()}
        seen.append("exit second")

    stack = LifespanStack(registry.lifespans(), loop=loop, startup_timeout_s=5)
    merged = stack.enter()
    use_resources(merged)
    try:
        assert resources()["db"] == "pool" and resources()["http"] is loop
        with pytest.raises(TypeError):
            resources()["db"] = "other"  # type: ignore[index]
    finally:
        stack.exit(timeout_s=5)
        use_resources(None)
    assert seen == ["enter first", "enter second", "exit second", "exit first"]
    assert dict(resources()) == {}


def test_a_lifespan_must_be_a_generator_function_without_arguments() -> None:
    registry = LifespanRegistry()

    def not_a_generator() -> dict[str, Any]:
        return {}

    with pytest.raises(LifespanError, match="not_a_generator must be a generator function"):
        registry.register(not_a_generator)

    def takes_args(settings: object) -> Iterator[None]:
        yield None

    with pytest.raises(LifespanError, match="takes_args must take no arguments"):
        registry.register(takes_args)


def test_a_start_that_fails_names_the_lifespan_and_exits_the_ones_entered_before() -> None:
    seen: list[str] = []

    def opened() -> Iterator[dict[str, Any]]:
        yield {"a": 1}
        seen.append("exit opened")

    def not_a_mapping() -> Iterator[Any]:
        yield ["a", "list"]

    def clashes() -> Iterator[dict[str, Any]]:
        yield {"a": 2}

    def returns() -> Iterator[dict[str, Any]]:
        return
        yield {}

    for bad, says in [
        (not_a_mapping, "yielded list, not a mapping of resources"),
        (clashes, "resource 'a' is also given by worker lifespan"),
        (returns, "it returned without yielding its resources"),
    ]:
        seen.clear()
        stack = LifespanStack([opened, bad], loop=None, startup_timeout_s=5)
        with pytest.raises(LifespanError, match=f"{bad.__qualname__} failed at start: {says}"):
            stack.enter()
        assert seen == ["exit opened"]


def test_an_async_lifespan_without_the_event_loop_is_refused() -> None:
    async def needs_loop() -> AsyncIterator[dict[str, Any]]:
        yield {}

    with pytest.raises(LifespanError, match="needs the worker's event loop"):
        LifespanStack([needs_loop], loop=None, startup_timeout_s=5).enter()


def test_an_exit_that_raises_or_hangs_is_logged_and_the_others_still_exit(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    def outer() -> Iterator[dict[str, Any]]:
        yield {}
        seen.append("exit outer")

    async def hangs() -> AsyncIterator[dict[str, Any]]:
        yield {}
        await asyncio.sleep(3600)

    def raises() -> Iterator[dict[str, Any]]:
        yield {}
        raise RuntimeError("close failed")

    stack = LifespanStack([outer, hangs, raises], loop=loop, startup_timeout_s=5)
    stack.enter()
    stack.exit(timeout_s=0.1)

    assert seen == ["exit outer"]
    assert "raises failed at exit" in caplog.text
    assert "hangs did not finish its exit in time" in caplog.text
