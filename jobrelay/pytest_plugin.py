"""The pytest plugin the ``jobrelay`` distribution registers (entry point ``pytest11``).

It only declares the ``jobrelay_stack`` fixture; the stack (the API, the store and a worker in
the test's process, on a virtual clock) is built when a test asks for it, so a test session that
does not use it loads nothing of jobrelay's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from services.testing.stack import JobrelayStack


@pytest.fixture
def jobrelay_resources() -> Mapping[str, Any] | None:
    """What ``jobrelay.resources()`` returns in ``jobrelay_stack``'s tasks: None enters the registered
    worker lifespans; override this fixture with a mapping of fakes to replace them."""
    return None


@pytest.fixture
def jobrelay_stack(jobrelay_resources: Mapping[str, Any] | None) -> Iterator[JobrelayStack]:
    """An in-process jobrelay (the real API app, store and worker middleware), closed after the test."""
    from services.testing.stack import JobrelayStack

    with JobrelayStack(resources=jobrelay_resources) as stack:
        yield stack
