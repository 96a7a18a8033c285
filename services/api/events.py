"""Server-sent events of job state changes, read by polling the job store from the API process.

NOTE: the store, not Redis pub/sub: every path that changes a job writes its row (``updated_at``
moves with each state, attempt and progress report), and many of them (the worker's status
writer, the crash recovery, the sweeper, a cancel, an expiry) would each have had to publish too,
a publish lost with its process being an event lost for good. Polling the row (a primary-key
read) or a queue's newest jobs and running jobs (two index range reads) every ``poll_s`` misses
nothing a row shows, resumes from any ``Last-Event-ID`` (event ids are the rows' ``updated_at``),
and costs the hot paths nothing. Under gunicorn's gevent worker a stream is a greenlet that
sleeps between polls, so streams do not hold other requests up; each API process serves at most
``EVENTS_MAX_STREAMS`` at once (503 beyond) for at most ``EVENTS_MAX_DURATION_S`` each.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from shared.errors import NotFound, Unavailable
from shared.job import Job, JobStatus
from shared.store.jobs import JobFilter, JobStore
from shared.store.models import jobs

#: Seconds between two reads of the store for one stream.
POLL_S = 0.5
#: Seconds between comment lines on a quiet stream, so proxies and clients see it alive.
KEEPALIVE_S = 15.0
#: The newest jobs of the queue a queue stream watches, besides its running ones.
WINDOW = 200
#: An event id as the API writes it.
EVENT_ID = re.compile("^[0-9]{1,16}-[0-9a-f-]{1,36}$")
#: Milliseconds a client waits before it reconnects (the stream's ``retry:`` field).
RETRY_MS = 1000


def _ms(job: Job) -> int:
    return int(job.updated_at.timestamp() * 1000)


def event_id(job: Job) -> str:
    """``<updated_at in ms>-<job id>``: ordered as the changes were written, so a stream resumes after one."""
    return f"{_ms(job):013d}-{job.id}"


def parse_event_id(raw: str | None) -> tuple[int, str] | None:
    """The position a ``Last-Event-ID`` header names; None without one, or for one this API did not write.

    NOTE: an id of another server (a client moved behind a load balancer to another deployment) or
    none at all starts the stream from now, as a first connection: refusing it would leave an
    EventSource reconnecting with the same id forever.
    """
    if raw is None or not EVENT_ID.fullmatch(raw):
        return None
    ms, _, job_id = raw.partition("-")
    return int(ms), job_id


def frame(name: str, ident: str, data: dict[str, Any]) -> bytes:
    return f"id: {ident}\nevent: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Stream:
    """A response body of events that gives its slot back once: at its end, or when the server closes it.

    NOTE: gunicorn calls ``close`` when the client went away (a write failed) or the body ended; a
    generator's ``finally`` would not run for one closed before its first item.
    """

    def __init__(self, events: Iterator[bytes], release: Callable[[], None]) -> None:
        self._events = events
        self._release: Callable[[], None] | None = release
        self._started = False

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> bytes:
        if not self._started:
            self._started = True
            return f"retry: {RETRY_MS}\n\n".encode()
        try:
            return next(self._events)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        close = getattr(self._events, "close", None)
        if close is not None:
            close()
        if self._release is not None:
            release, self._release = self._release, None
            release()


@dataclass
class Streams:
    """The event streams of one API process: at most ``max_streams`` open, each for at most ``max_duration_s``."""

    store: JobStore
    max_streams: int
    max_duration_s: float
    poll_s: float = POLL_S
    keepalive_s: float = KEEPALIVE_S
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _open: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def reserve(self) -> None:
        with self._lock:
            if self._open >= self.max_streams:
                raise Unavailable(
                    f"this API process serves its limit of {self.max_streams} event streams (EVENTS_MAX_STREAMS); "
                    "try again shortly, or poll GET /v1/jobs/{id}"
                )
            self._open += 1

    def release(self) -> None:
        with self._lock:
            self._open -= 1

    @property
    def open(self) -> int:
        return self._open

    def job_stream(self, job_id: str, resume: tuple[int, str] | None, *, traceback: bool) -> Stream:
        """A job's changes until it is final (the final state is the last event); the slot is held until closed."""
        return Stream(self._job_events(job_id, resume, traceback=traceback), self.release)

    def queue_stream(
        self, queue: str | None, namespace: str | None, resume: tuple[int, str] | None, *, traceback: bool
    ) -> Stream:
        """Changes of the jobs of ``queue`` (every queue when None) visible to ``namespace``."""
        return Stream(self._queue_events(queue, namespace, resume, traceback=traceback), self.release)

    def _ticks(self) -> Iterator[bool]:
        """Once per poll until the stream's time is up; True when a keep-alive comment is due."""
        deadline = self.clock() + self.max_duration_s
        quiet_until = self.clock() + self.keepalive_s
        while self.clock() < deadline:
            now = self.clock()
            if now >= quiet_until:
                quiet_until = now + self.keepalive_s
                yield True
            else:
                yield False
            self.sleep(self.poll_s)

    def _job_events(self, job_id: str, resume: tuple[int, str] | None, *, traceback: bool) -> Iterator[bytes]:
        sent: str | None = None
        for keepalive in self._ticks():
            try:
                job = self.store.get(job_id)
            except NotFound:
                return  # pruned meanwhile
            view = job.to_api(traceback=traceback)
            fingerprint = json.dumps(view, sort_keys=True)
            if fingerprint != sent and (resume is None or (_ms(job), job.id) > resume):
                sent = fingerprint
                yield frame("job", event_id(job), view)
            elif keepalive:
                yield b": keep-alive\n\n"
            if job.status.is_final:
                return

    def _queue_events(
        self, queue: str | None, namespace: str | None, resume: tuple[int, str] | None, *, traceback: bool
    ) -> Iterator[bytes]:
        # Only changes after the resume point, or after the stream opened.
        after = resume or (int(time.time() * 1000), "")
        sent: dict[str, str] = {}
        watched: set[str] = set()
        for keepalive in self._ticks():
            found = self.window(queue, namespace, watched)
            changed = []
            for job in found:
                view = job.to_api(traceback=traceback)
                fingerprint = json.dumps(view, sort_keys=True)
                if sent.get(job.id) != fingerprint and (_ms(job), job.id) > after:
                    sent[job.id] = fingerprint
                    changed.append((event_id(job), view))
            watched = {job.id for job in found if not job.status.is_final}
            # NOTE: a job that left the window needs no memory any more (it is final, or it is watched).
            seen = {job.id for job in found}
            sent = {job_id: value for job_id, value in sent.items() if job_id in seen}
            for ident, view in sorted(changed, key=lambda pair: pair[0]):
                yield frame("job", ident, view)
            if not changed and keepalive:
                yield b": keep-alive\n\n"

    def window(self, queue: str | None, namespace: str | None, watched: set[str]) -> list[Job]:
        """The queue's newest jobs, its running ones, and those watched before that left both (ended, mostly).

        NOTE: the first two are pages of the job list (``shared/store/pages.py``), so each reads a bounded
        number of rows whatever the table holds; the last are primary-key reads.
        """
        newest = self.store.page(JobFilter(queue=queue, namespace=namespace), limit=WINDOW).items
        running = JobFilter(status=JobStatus.RUNNING, queue=queue, namespace=namespace)
        found = {job.id: job for job in newest}
        for job in self.store.page(running, limit=WINDOW).items:
            found.setdefault(job.id, job)
        missing = sorted(watched - set(found))
        if missing:
            with self.store.engine.connect() as conn:
                for job in map(Job.from_row, conn.execute(select(jobs).where(jobs.c.id.in_(missing)))):
                    found[job.id] = job
        return list(found.values())
