"""Which jobs a worker process holds, and how, in a file that outlives the process.

A claimed job's row says ``running`` from its claim on, whether a thread runs it or it waits,
claimed ahead (``reservations.py``), for a thread to take it. When the process dies the
supervisor tells them apart here (``crashes.py``): an attempt a thread was inside counts, since
its process died under it; a claim ahead goes back uncounted. A job in neither state (an attempt
that ended with its commit still pending, or one a thread claimed itself) is recovered as any
was before: its lease released, its message put back.

One record of ``RECORD_BYTES`` per thread and per claim ahead: the state (``R`` a thread is
inside the job's attempt, ``A`` claimed ahead, anything else free), the job id, spaces, a
newline. An ``R`` record also holds, after its job id, when the attempt started and its hard
deadline (``time.monotonic()``, the same clock in every process of the machine; ``-`` for none),
its cancel grace, whether the thread is inside the task (``t``) or past it (``h``), and a CRC-32
of the record: the live process's
supervisor reads these every poll to enforce the limits from outside its GIL (``limits.py``), and
takes no decision on a record it read half-written.

Each change is one ``pwrite`` at the record's offset, with no fsync: the page cache outlives
the process, and a machine that dies takes the supervisor with it. The file's space is allocated
before it is written (``posix_fallocate``), so a full disk is an ``OSError`` here and never a
SIGBUS; the file is then removed, and the supervisor recovers this process as before.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from services.worker.limits import AttemptRecord, Limits, job_limits
from shared.job import Job

log = logging.getLogger(__name__)

RECORD_BYTES = 128
#: The longest job id a record holds (with its limits); the store's ids are far shorter.
MAX_JOB_ID = 62
#: Records the file has room for at first: more than the threads and claims ahead of most processes.
_INITIAL_RECORDS = 64
_RUNNING = b"R"
_AHEAD = b"A"
_FREE = b" "
#: An ``R`` record's phase: its thread is inside the task, or past it in the outcome hooks.
_IN_TASK = "t"
_PAST_TASK = "h"


def held_jobs_path(data_dir: Path, owner: str) -> Path:
    """Where the worker process ``owner`` keeps its file."""
    return data_dir / "held-jobs" / owner


@dataclass(frozen=True)
class Held:
    """What a dead process held: the jobs its threads were inside, and those claimed ahead."""

    running: frozenset[str]
    ahead: frozenset[str]


def _records(data: bytes) -> Iterable[bytes]:
    for offset in range(0, len(data) - RECORD_BYTES + 1, RECORD_BYTES):
        yield data[offset : offset + RECORD_BYTES]


def _running_record(job_id: str, started_s: float, deadline_s: float | None, grace_s: float, in_task: bool) -> bytes:
    deadline = "-" if deadline_s is None else f"{deadline_s:.3f}"
    phase = _IN_TASK if in_task else _PAST_TASK
    body = f"{job_id} {started_s:.3f} {deadline} {grace_s:.3f} {phase}".encode("ascii", errors="replace")
    return body + f" {zlib.crc32(body):08x}".encode()


def _parse_attempt(record: bytes) -> AttemptRecord | None:
    """The attempt in an ``R`` record, or None for one read half-written (its CRC fails) or malformed."""
    body, _, crc = record[1:].rstrip().rpartition(b" ")
    fields = body.split()
    if len(fields) != 5:
        return None
    try:
        if int(crc, 16) != zlib.crc32(body):
            return None
        deadline_s = None if fields[2] == b"-" else float(fields[2])
        in_task = fields[4].decode("ascii") == _IN_TASK
        return AttemptRecord(fields[0].decode("ascii"), float(fields[1]), deadline_s, float(fields[3]), in_task)
    except ValueError:
        return None


def read_attempts(path: Path) -> list[AttemptRecord] | None:
    """The attempts the live process that keeps ``path`` is inside, with their limits; None without a file.

    A record read half-written (the process rewrites it now) is left out: the next poll reads it whole.
    """
    try:
        data = path.read_bytes()
    except OSError:
        return None
    found = (_parse_attempt(record) for record in _records(data) if record[:1] == _RUNNING)
    return [attempt for attempt in found if attempt is not None]


def read_held(path: Path) -> Held | None:
    """What the process that wrote ``path`` held; None when it left no file (it could not keep one)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    running: set[str] = set()
    ahead: set[str] = set()
    for record in _records(data):
        words = record[1:].split(maxsplit=1)
        job_id = words[0].decode("ascii", errors="replace") if words else ""
        if record[:1] == _RUNNING and job_id:
            running.add(job_id)
        elif record[:1] == _AHEAD and job_id:
            ahead.add(job_id)
    # A job a thread took is running, whatever its claim ahead's record says.
    return Held(frozenset(running), frozenset(ahead - running))


class HeldJobs:
    """This process's side: marks written as claims ahead are made and threads take their jobs.

    ``path`` None keeps nothing (a process no supervisor recovers, and unit tests).
    ``limits_of``: the hard limit and cancel grace written with each attempt a thread enters.
    """

    def __init__(self, path: Path | None, *, limits_of: Callable[[Job], Limits] = job_limits) -> None:
        self.path = path
        self.limits_of = limits_of
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._records = 0
        self._next = 0
        self._free: list[int] = []
        self._by_thread: dict[int, int] = {}
        #: Threads whose record says ``R`` now, and the job id and start of their attempt.
        self._inside: dict[int, tuple[str, float]] = {}
        self._by_job: dict[str, int] = {}
        if path is not None:
            self._open(path)

    # -- the consumer's side: claims ahead ---------------------------------

    def ahead(self, job_ids: Iterable[str]) -> None:
        """These jobs are about to be claimed ahead (marked before the claim commits)."""
        with self._lock:
            for job_id in job_ids:
                if job_id not in self._by_job:
                    index = self._by_job[job_id] = self._slot()
                    self._write(index, _AHEAD, job_id)

    def not_ahead(self, job_ids: Iterable[str]) -> None:
        """These jobs are no longer claimed ahead here (not claimed after all, given back, cancelled)."""
        with self._lock:
            for job_id in job_ids:
                self._drop_ahead(job_id)

    # -- the worker threads' side ------------------------------------------

    def enter(self, job: Job) -> None:
        """This thread is about to run ``job``'s attempt: it counts if the process dies now, and its
        supervisor kills the process if it runs past its hard limit or its cancel grace."""
        limits = self.limits_of(job)
        started_s = time.monotonic()
        deadline_s = None if limits.hard_limit_s is None else started_s + limits.hard_limit_s
        with self._lock:
            record = _running_record(job.id, started_s, deadline_s, limits.cancel_grace_s, in_task=True)
            self._write(self._thread_slot(), _RUNNING, job.id, record)
            self._inside[threading.get_ident()] = (job.id, limits.cancel_grace_s)
            self._drop_ahead(job.id)

    def past_task(self) -> None:
        """This thread's task returned: its attempt still counts, but no limit or cancel is enforced now.

        NOTE: its outcome hooks may wait out a store or Redis outage for longer than the hard limit
        or a cancel grace; the task is done, and its process must not be killed for it.
        """
        ident = threading.get_ident()
        with self._lock:
            inside = self._inside.get(ident)
            if inside is not None:
                job_id, grace_s = inside
                record = _running_record(job_id, time.monotonic(), None, grace_s, in_task=False)
                self._write(self._thread_slot(), _RUNNING, job_id, record)

    def leave(self) -> None:
        """This thread is out of its attempt (its outcome recorded or handed to the status writer)."""
        ident = threading.get_ident()
        with self._lock:
            if self._inside.pop(ident, None) is not None:
                self._write(self._thread_slot(), _FREE, "")

    # -- the file ------------------------------------------------------------

    def _open(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            log.warning("cannot keep %s (%s): a crash of this process counts no attempt", path, exc)
            return
        self._grow(_INITIAL_RECORDS)

    def _grow(self, records: int) -> bool:
        if self._fd is None:
            return False
        try:
            os.posix_fallocate(self._fd, 0, records * RECORD_BYTES)
        except OSError as exc:
            self._give_up(exc)
            return False
        self._records = records
        return True

    def _write(self, index: int, state: bytes, job_id: str, body: bytes | None = None) -> None:
        """Write record ``index``: ``state``, then ``body`` (by default the job id alone)."""
        if self._fd is None:
            return
        if index >= self._records and not self._grow(max(index + 1, 2 * self._records)):
            return
        encoded = body if body is not None else job_id.encode("ascii", errors="replace")
        if len(job_id) > MAX_JOB_ID or len(encoded) > RECORD_BYTES - 2:
            # Not a job id this store makes; left unmarked, its job is recovered as before.
            state, encoded = _FREE, b""
        try:
            os.pwrite(self._fd, state + encoded.ljust(RECORD_BYTES - 2) + b"\n", index * RECORD_BYTES)
        except OSError as exc:
            self._give_up(exc)

    def _give_up(self, exc: OSError) -> None:
        """No file rather than a wrong one: the supervisor then recovers this process as before."""
        log.warning("cannot keep %s (%s): a crash of this process counts no attempt", self.path, exc)
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def _slot(self) -> int:
        if self._free:
            return self._free.pop()
        self._next += 1
        return self._next - 1

    def _thread_slot(self) -> int:
        ident = threading.get_ident()
        index = self._by_thread.get(ident)
        if index is None:
            index = self._by_thread[ident] = self._slot()
        return index

    def _drop_ahead(self, job_id: str) -> None:
        index = self._by_job.pop(job_id, None)
        if index is not None:
            self._write(index, _FREE, "")
            self._free.append(index)
