"""``GET /v1/jobs/{id}/events`` and ``GET /v1/events``: job state changes and progress as server-sent events."""

from __future__ import annotations

import falcon

from services.api.events import Streams, parse_event_id
from services.api.middleware import namespace_of, sees_tracebacks, visible
from shared.catalog import QUEUE_NAME
from shared.errors import FieldError, InvalidInput

EVENT_STREAM = "text/event-stream"


def _start(resp: falcon.Response) -> None:
    resp.content_type = EVENT_STREAM
    resp.set_header("Cache-Control", "no-store")
    # NOTE: nginx buffers a proxied response unless told not to, which would hold events back.
    resp.set_header("X-Accel-Buffering", "no")


def _resume(req: falcon.Request) -> tuple[int, str] | None:
    return parse_event_id(req.get_header("Last-Event-ID"))


class JobEventsResource:
    scopes = {"GET": "read"}
    namespaced = True

    def __init__(self, streams: Streams) -> None:
        self.streams = streams

    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        unknown = sorted(req.params)
        if unknown:
            raise InvalidInput("unknown parameters", [FieldError(f"/query/{name}", "is not a parameter of this stream")
                                                      for name in unknown])  # fmt: skip
        resume = _resume(req)
        visible(req, self.streams.store.get(job_id))
        self.streams.reserve()
        _start(resp)
        resp.stream = self.streams.job_stream(job_id, resume, traceback=sees_tracebacks(req))


class EventsResource:
    scopes = {"GET": "read"}
    namespaced = True

    def __init__(self, streams: Streams) -> None:
        self.streams = streams

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        errors = [FieldError(f"/query/{name}", "is not a parameter of this stream")
                  for name in sorted(set(req.params) - {"queue"})]  # fmt: skip
        queue = req.params.get("queue")
        if isinstance(queue, list):
            errors.append(FieldError("/query/queue", "give it once"))
        elif queue is not None and not QUEUE_NAME.fullmatch(queue):
            errors.append(FieldError("/query/queue", "must be a queue name (lowercase letters, digits, '_', '-')"))
        if errors:
            raise InvalidInput("the stream's query is invalid", errors)
        resume = _resume(req)
        self.streams.reserve()
        _start(resp)
        resp.stream = self.streams.queue_stream(
            queue if isinstance(queue, str) else None, namespace_of(req), resume, traceback=sees_tracebacks(req)
        )
