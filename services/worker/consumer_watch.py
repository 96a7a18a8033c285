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

from dramatiq import Worker

from shared import metrics
from shared.broker.waking import is_delay_queue

log = logging.getLogger(__name__)
#: ``$DATA_DIR/consumers-down.<pid>`` exists, fresh, while a process has a consumer down.
CONSUMERS_DOWN_PREFIX = "consumers-down."


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
            # NOTE: Dramatiq keeps one ConsumerThread per queue name and adds none while one is
            # registered; worker threads look the consumer up by name when they are done, so
            # their acks go to the new one.
            del self.worker.consumers[queue]
            self.worker._add_consumer(queue, delay=is_delay_queue(queue))
            metrics.consumer_restarts_total.labels(queue).inc()
        return revived
