"""The loop step of every group commit here: the next item, then whatever else is already queued.

The worker's status writer and acker and the API's submit writer each take
work from a queue this way; ``None`` put on such a queue asks its loop to stop.
"""

from __future__ import annotations

import queue
from typing import TypeVar

_T = TypeVar("_T")


def take_batch(source: queue.SimpleQueue[_T | None], limit: int) -> tuple[list[_T], bool]:
    """The next item (waiting for it) and the ones already queued behind it, up to ``limit``.

    The flag says a ``None`` was taken: the caller handles the batch, then stops.
    """
    items: list[_T] = []
    while len(items) < limit:
        try:
            item = source.get_nowait() if items else source.get()
        except queue.Empty:
            break
        if item is None:
            return items, True
        items.append(item)
    return items, False
