"""The consumer watch: every queue of a worker process keeps a live consumer thread.

Dramatiq runs one consumer thread per queue (and per delay queue). One that
ends (an error its handler did not expect, raised again while it closed) leaves
its queue unserved in a process that otherwise looks healthy: no fetch, and no
delayed message or retry of that queue made due. The heartbeat asks this watch
every beat; a dead consumer is started again (its messages in memory are gone,
but their ids are in this process's ack set, which the new consumer puts back
first), counted in ``jobrelay_worker_consumer_restarts_total``, and until then
the worker reports itself not ready.
"""

from __future__ import annotations

import logging
import time

from dramatiq import Worker
from dramatiq.worker import ConsumerThread

from shared import metrics
from shared.broker.waking import is_delay_queue

log = logging.getLogger(__name__)
#: ``$DATA_DIR/consumers-down.<pid>`` exists, fresh, while a process has a consumer down.
CONSUMERS_DOWN_PREFIX = "consumers-down."
#: Longest a revived consumer thread is given to make its consumer before it is swapped in.
SWAP_WAIT_S = 5.0


class ConsumerWatch:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def down(self) -> list[str]:
        """Queues whose consumer thread ended while the worker still runs."""
        return sorted(
            queue for queue, thread in list(self.worker.consumers.items()) if thread.running and not thread.is_alive()
        )

    def revive(self) -> list[str]:
        """Start a new consumer thread for every queue whose thread ended; returns those queues."""
        revived = self.down()
        for queue in revived:
            log.error("the consumer of queue %s ended; starting a new one", queue)
            delay = is_delay_queue(queue)
            thread = ConsumerThread(
                broker=self.worker.broker,
                queue_name=queue,
                prefetch=self.worker.delay_prefetch if delay else self.worker.queue_prefetch,
                work_queue=self.worker.work_queue,
                worker_timeout=self.worker.worker_timeout,
            )
            thread.start()
            # NOTE: swapped in once its consumer exists: worker threads look the consumer thread up by
            # queue name to ack, and must never find none (a KeyError ends a worker thread) or one
            # whose consumer is not made yet (the ack would be dropped).
            deadline = time.monotonic() + SWAP_WAIT_S
            while thread.consumer is None and thread.is_alive() and time.monotonic() < deadline:
                time.sleep(0.01)
            self.worker.consumers[queue] = thread
            metrics.consumer_restarts_total.labels(queue).inc()
        return revived
