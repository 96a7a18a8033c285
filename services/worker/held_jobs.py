"""Which jobs a worker process holds, and how, in a file that outlives the process.

A claimed job's row says ``running`` from its claim on, whether a thread runs it or it waits,
claimed ahead (``reservations.py``), for a thread to take it. When the process dies the
supervisor tells them apart here (``crashes.py``): an attempt a thread was inside counts, since
its process died under it; a claim ahead goes back uncounted. A job in neither state (an attempt
that ended with its commit still pending, or one a thread claimed itself) is recovered as any
was before: its lease released, its message put back.

One record of ``RECORD_BYTES`` per thread and per claim ahead: the state (``R`` a thread is
inside the job's attempt, ``A`` claimed ahead, anything else free), the job id, spaces, a
newline. Each change is one ``pwrite`` at the record's offset, with no fsync: the page cache
outlives the process, and a machine that dies takes the supervisor with it. The file's space is
allocated before it is written (``posix_fallocate``), so a full disk is an ``OSError`` here and
never a SIGBUS; the file is then removed, and the supervisor recovers this process as before.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

RECORD_BYTES = 64
#: Records the file has room for at first: more than the threads and claims ahead of most processes.
_INITIAL_RECORDS = 64
_RUNNING = b"R"
_AHEAD = b"A"
_FREE = b" "


def held_jobs_path(data_dir: Path, owner: str) -> Path:
    """Where the worker process ``owner`` keeps its file."""
    return data_dir / "held-jobs" / owner


@dataclass(frozen=True)
class Held:
    """What a dead process held: the jobs its threads were inside, and those claimed ahead."""

    running: frozenset[str]
    ahead: frozenset[str]


def read_held(path: Path) -> Held | None:
    """What the process that wrote ``path`` held; None when it left no file (it could not keep one)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    running: set[str] = set()
    ahead: set[str] = set()
    for offset in range(0, len(data) - RECORD_BYTES + 1, RECORD_BYTES):
        record = data[offset : offset + RECORD_BYTES]
        job_id = record[1:].strip().decode("ascii", errors="replace")
        if record[:1] == _RUNNING and job_id:
            running.add(job_id)
        elif record[:1] == _AHEAD and job_id:
            ahead.add(job_id)
    # A job a thread took is running, whatever its claim ahead's record says.
    return Held(frozenset(running), frozenset(ahead - running))


class HeldJobs:
    """This process's side: marks written as claims ahead are made and threads take their jobs.

    ``path`` None keeps nothing (a process no supervisor recovers, and unit tests).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._records = 0
        self._next = 0
        self._free: list[int] = []
        self._by_thread: dict[int, int] = {}
        #: Threads whose record says ``R`` now.
        self._inside: set[int] = set()
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

    def enter(self, job_id: str) -> None:
        """This thread is about to run ``job_id``'s attempt: it counts if the process dies now."""
        with self._lock:
            self._write(self._thread_slot(), _RUNNING, job_id)
            self._inside.add(threading.get_ident())
            self._drop_ahead(job_id)

    def leave(self) -> None:
        """This thread is out of its attempt (its outcome recorded or handed to the status writer)."""
        ident = threading.get_ident()
        with self._lock:
            if ident in self._inside:
                self._inside.discard(ident)
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

    def _write(self, index: int, state: bytes, job_id: str) -> None:
        if self._fd is None:
            return
        if index >= self._records and not self._grow(max(index + 1, 2 * self._records)):
            return
        encoded = job_id.encode("ascii", errors="replace")
        if len(encoded) > RECORD_BYTES - 2:
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
