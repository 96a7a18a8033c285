"""The Dramatiq Redis broker and how a job row becomes a message.

The job id is the Dramatiq message id, so the store, Redis, logs and
metrics share one key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dramatiq
import redis
from dramatiq.broker import Broker
from dramatiq.middleware import Middleware
from redis.backoff import ExponentialBackoff
from redis.retry import Retry as RedisRetry

from shared import tracing
from shared.broker.connections import connect
from shared.broker.waking import REDIS_DOWN, WakingRedisBroker
from shared.errors import Unavailable
from shared.job import Job, due_for_broker, utcnow

NAMESPACE = "dramatiq"


def redis_client(redis_url: str) -> redis.Redis:
    """A client that gives up quickly when Redis is away: callers have a fallback (the outbox).

    ``redis_url``: one server, or a Sentinel-managed primary (``shared/broker/connections.py``).
    """
    # NOTE: redis-py's default retries back off for seconds; an API request must not hang that long.
    return connect(
        redis_url,
        socket_connect_timeout=2,
        socket_timeout=10,
        health_check_interval=30,
        retry=RedisRetry(ExponentialBackoff(cap=0.2, base=0.02), retries=2),
    )


def build_broker(
    redis_url: str,
    *,
    middleware: list[Middleware] | None = None,
    heartbeat_timeout_s: float = 60.0,
    dead_message_ttl_s: float = 7 * 86400.0,
    fair_sharing: bool = True,
) -> WakingRedisBroker:
    """A Redis broker with exactly the middleware given (none by default, as the API needs)."""
    return WakingRedisBroker(
        **broker_options(
            redis_client(redis_url),
            middleware=middleware or [],
            heartbeat_timeout_s=heartbeat_timeout_s,
            dead_message_ttl_s=dead_message_ttl_s,
            fair_sharing=fair_sharing,
        )
    )


def broker_options(
    client: redis.Redis,
    *,
    middleware: list[Middleware],
    heartbeat_timeout_s: float,
    dead_message_ttl_s: float,
    fair_sharing: bool = True,
) -> dict[str, Any]:
    """The keyword arguments of every jobrelay Redis broker (the worker's subclass takes them too);
    ``fair_sharing``: a namespace's messages wait in its lane (``shared/broker/bands.py``)."""
    return {
        "fair_sharing": fair_sharing,
        "client": client,
        "namespace": NAMESPACE,
        "middleware": middleware,
        "heartbeat_timeout": int(heartbeat_timeout_s * 1000),
        "dead_message_ttl": int(dead_message_ttl_s * 1000),
        # NOTE: Dramatiq's random maintenance is replaced by our deterministic orphan requeue.
        "maintenance_chance": 0,
    }


def message_for(job: Job, traceparent: str | None = None) -> dramatiq.Message[object]:
    """The job's message; ``traceparent``: the publish span's, else the job's own (tracing off here)."""
    options: dict[str, object] = {"max_retries": job.max_retries}
    if job.time_limit_s is not None:
        options["time_limit"] = int(job.time_limit_s * 1000)
    if job.request_id:
        options["request_id"] = job.request_id
    if job.priority:
        # The message's band (shared/broker/bands.py); retries and due delayed copies keep it.
        options["priority"] = job.priority
    if job.namespace:
        # The message's lane when fair sharing is on (shared/broker/bands.py); its copies keep it too.
        options["namespace"] = job.namespace
    if traceparent or job.traceparent:
        options[tracing.TRACEPARENT] = traceparent or job.traceparent
    return dramatiq.Message(
        queue_name=job.queue,
        actor_name=job.task,
        args=(),
        kwargs=job.args,
        options=options,
        message_id=job.id,
        message_timestamp=int(job.created_at.timestamp() * 1000),
    )


def publish(broker: Broker, batch: Sequence[Job]) -> list[str]:
    """Enqueue each job whose time is within the broker's delay horizon; returns the ids sent.

    All messages go in one Redis round trip. Raises ``Unavailable`` when Redis
    cannot be reached; the rows stay unpublished and the outbox relay sends them later.
    Another broker (Dramatiq's ``StubBroker``, in unit tests) gets one ``enqueue`` per message.
    """
    now = utcnow()
    messages: list[tuple[dramatiq.Message[object], int | None]] = []
    spans: list[Any] = []
    for job in batch:
        if not due_for_broker(job, now):
            continue
        due = job.next_attempt_at or job.scheduled_for
        delay_ms = None if due is None or due <= now else int((due - now).total_seconds() * 1000)
        # NOTE: one producer span per job, a child of the span the job was submitted in (kept on its
        # row), whichever process publishes it: the API, the relay, a released workflow step.
        if not tracing.enabled():
            messages.append((message_for(job), delay_ms))
            continue
        producer = tracing.start(
            f"publish {job.queue}",
            kind="producer",
            attributes=tracing.messaging_attributes(
                "publish", queue=job.queue, job_id=job.id, task=job.task, workflow_id=job.workflow_id
            ),
            parent=job.traceparent,
            current=False,
        )
        spans.append(producer)
        messages.append((message_for(job, tracing.traceparent_of(producer)), delay_ms))
    if not messages:
        return []
    try:
        if isinstance(broker, WakingRedisBroker):
            broker.enqueue_many(messages)
        else:
            for message, delay_ms in messages:
                broker.enqueue(message, delay=delay_ms)
    except REDIS_DOWN as exc:
        for producer in spans:
            tracing.finish(producer, exc)
        raise Unavailable(f"Redis cannot be reached: {exc}") from exc
    for producer in spans:
        tracing.finish(producer)
    return [message.message_id for message, _ in messages]
