"""The no-op task for the Celery 5 side of the worker drain benchmark (``celery -A bench.celery_noop``).

Celery's command line needs an app at module level, so this module builds it
at import from ``REDIS_URL``; nothing in jobrelay imports it. Results are off
(no backend, ``ignore_result``), acks are late (after the task, as jobrelay and
Dramatiq ack), and each worker thread prefetches ``PREFETCH_PER_THREAD``
messages, as a jobrelay worker thread does.
"""

from __future__ import annotations

import os

from celery import Celery

QUEUE = "bench"
#: Messages prefetched per pool thread: the same as ``services.worker.process.PREFETCH_PER_THREAD``.
PREFETCH_PER_THREAD = 8


def build_app(redis_url: str) -> Celery:
    app = Celery("bench", broker=redis_url, set_as_current=False)
    app.conf.update(
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        worker_prefetch_multiplier=PREFETCH_PER_THREAD,
        task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    @app.task(name="bench.noop", ignore_result=True)
    def noop() -> None:
        """Do nothing: the benchmark measures the platform, not the task."""

    return app


app = build_app(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
